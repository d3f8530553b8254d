// The receipts page (kaohe/api/vote.py): a closed evaluation's counted receipts are fetched
// once, and the code a rater types is looked up here, in the browser: the server never learns
// which receipt anyone asked about.
(function () {
  "use strict";

  var $ = function (id) { return document.getElementById(id); };
  var counted = new Set();

  function show(id) {
    ["loading", "message", "check"].forEach(function (s) { $(s).hidden = s !== id; });
  }

  function message(title, text, code) {
    $("message-title").textContent = title;
    $("message-text").textContent = text;
    $("message").dataset.code = code || "";
    show("message");
  }

  // What a rater types, as the receipts are written: XXXX-XXXX-XXXX, upper case.
  function normalized(text) {
    var chars = text.toUpperCase().replace(/[^0-9A-Z]/g, "");
    return chars.length === 12 ? chars.slice(0, 4) + "-" + chars.slice(4, 8) + "-" + chars.slice(8) : chars;
  }

  var params = new URLSearchParams(location.search);
  var campaign = params.get("campaign") || "";
  var unit = params.get("unit") || "";
  if (!campaign || !unit) {
    message("缺少单位", "请从投票后的回执页面进入，或在地址中给出 campaign 和 unit。", "bad_request");
    return;
  }
  var url = "/v1/campaigns/" + encodeURIComponent(campaign) + "/units/" + encodeURIComponent(unit) + "/receipts";
  fetch(url, { credentials: "omit", cache: "no-store", referrerPolicy: "no-referrer" })
    .then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (data) { return { ok: r.ok, data: data }; });
    }, function () {
      return { ok: false, data: { code: "network", message: "网络连接失败，请检查网络后重试。" } };
    })
    .then(function (r) {
      var data = r.data;
      if (data.name) {
        $("unit-name").textContent = data.name;
        $("unit-name").hidden = false;
      }
      if (!r.ok) {
        var title = data.code === "not_closed" ? "测评尚未结束" : data.code === "unit_unknown" ? "未找到该单位" : "暂时无法查询";
        message(title, data.message || "请稍后重试。", data.code);
        return;
      }
      counted = new Set(data.receipts);
      $("count").textContent = "测评已结束，共有 " + data.count + " 张票计入结果。输入您的回执码查询：";
      show("check");
    });

  $("check-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var code = normalized($("code").value);
    var result = $("result");
    if (!code) return;
    var found = counted.has(code);
    result.textContent = found ? "已计入：回执码 " + code + " 对应的票已计入测评结果。" : "未找到：没有回执码 " + code + "。请核对后重试。";
    result.className = "result " + (found ? "found" : "absent");
    result.dataset.found = found ? "1" : "0";
    result.hidden = false;
  });
})();
