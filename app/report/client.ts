/**
 * The report's only script, inlined in the page: the gallery's search box and filters (lowest confidence
 * first, mismatches only, finish_reason = length). It reads the cards' `data-*` attributes and hides or
 * reorders them; everything is visible without it.
 */
export const CLIENT_SCRIPT = `
(function () {
  var grid = document.getElementById('gallery-grid');
  if (!grid) return;
  var cards = Array.prototype.slice.call(grid.querySelectorAll('.card'));
  var search = document.getElementById('search');
  var sort = document.getElementById('sort');
  var mismatches = document.getElementById('only-mismatches');
  var length = document.getElementById('only-length');
  var shown = document.getElementById('shown');
  var haystack = cards.map(function (card) {
    var parts = Array.prototype.slice.call(card.querySelectorAll('[data-search]')).map(function (el) { return el.textContent; });
    return parts.join(' \\n ').toLowerCase();
  });
  var number = function (text, fallback) { var v = parseFloat(text); return isNaN(v) ? fallback : v; };
  function apply() {
    var needle = search ? search.value.trim().toLowerCase() : '';
    var count = 0;
    cards.forEach(function (card, i) {
      var keep = (needle === '' || haystack[i].indexOf(needle) >= 0)
        && (!mismatches || !mismatches.checked || card.getAttribute('data-match') === '0')
        && (!length || !length.checked || card.getAttribute('data-finish') === 'length');
      card.hidden = !keep;
      if (keep) count++;
    });
    var order = cards.slice();
    if (sort && sort.value === 'confidence') {
      order.sort(function (a, b) {
        return number(a.getAttribute('data-conf'), Infinity) - number(b.getAttribute('data-conf'), Infinity)
          || number(a.getAttribute('data-order'), 0) - number(b.getAttribute('data-order'), 0);
      });
    } else {
      order.sort(function (a, b) { return number(a.getAttribute('data-order'), 0) - number(b.getAttribute('data-order'), 0); });
    }
    order.forEach(function (card) { grid.appendChild(card); });
    if (shown) shown.textContent = String(count);
    var none = document.getElementById('gallery-empty');
    if (none) none.hidden = count !== 0;
  }
  [search, sort, mismatches, length].forEach(function (el) {
    if (el) { el.addEventListener('input', apply); el.addEventListener('change', apply); }
  });
  apply();
})();
`
