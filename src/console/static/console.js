// broadcast-worker console: the one script, served by the binary. The
// pages work without it; it only adds "select all" to the dead letters.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var all = document.getElementById("select-all");
  if (!all) return;
  all.addEventListener("change", function () {
    document.querySelectorAll("input.select-job").forEach(function (box) {
      box.checked = all.checked;
    });
  });
});
