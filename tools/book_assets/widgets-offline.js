// Loaded before RequireJS and the ipywidgets manager on pages with widgets (nb_ipywidgets_js in
// _config.yml); tools/book_assets.sh stages it beside them in _static/ipywidgets/. Two fixes:
//
// 1. Fonts. The manager's bundles take their webpack public path from their RequireJS module
//    URLs, which RequireJS resolves against the page's folder, so the Font Awesome files were
//    asked for at notebooks/@jupyter-widgets/html-manager/dist/*.woff2 (not found). RequireJS is
//    configured here (a global `require` object read when require.js loads) to map that module
//    prefix onto this folder, where the font files are.
//
// 2. MathJax. @jupyter-widgets/controls typesets widget labels with the MathJax 2 call
//      MathJax.Hub.Queue(["Typeset", MathJax.Hub, element])
//    whenever window.MathJax exists, but the book loads MathJax 3, which has no Hub: every
//    labelled widget threw "Cannot read properties of undefined (reading 'Queue')". The call is
//    mapped onto MathJax 3's typesetPromise; labels drawn before MathJax 3 has started are typeset
//    once it is ready.
(function () {
  "use strict";
  var here = new URL(".", document.currentScript.src).href.replace(/\/$/, "");
  if (typeof window.require === "undefined") {
    window.require = { paths: { "@jupyter-widgets/html-manager/dist": here } };
  }
})();

(function () {
  "use strict";
  var pending = [];
  var hub = {
    Queue: function (command) {
      var element = Array.isArray(command) ? command[2] : undefined;
      var mj = window.MathJax;
      if (mj && mj.startup && mj.startup.promise && typeof mj.typesetPromise === "function") {
        mj.startup.promise
          .then(function () { return mj.typesetPromise(element ? [element] : undefined); })
          .catch(function (err) { console.warn("MathJax: typesetting a widget label failed:", err); });
      } else if (element) {
        pending.push(element);
      }
    },
  };

  // Before MathJax 3 runs, window.MathJax is its configuration (Sphinx writes it); MathJax 3
  // replaces that object with itself when it starts. Give every object assigned there a Hub.
  var current = window.MathJax || {};
  current.Hub = current.Hub || hub;
  Object.defineProperty(window, "MathJax", {
    configurable: true,
    enumerable: true,
    get: function () { return current; },
    set: function (value) {
      current = value;
      if (value && typeof value === "object" && !value.Hub) value.Hub = hub;
    },
  });

  // Typeset the labels queued before MathJax 3 had started, once it has.
  var startup = current.startup || (current.startup = {});
  var ready = startup.ready;
  startup.ready = function () {
    if (ready) ready(); else window.MathJax.startup.defaultReady();
    var elements = pending.splice(0);
    if (elements.length) {
      window.MathJax.startup.promise.then(function () {
        return window.MathJax.typesetPromise(elements);
      });
    }
  };
})();
