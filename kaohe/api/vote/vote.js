// The raters' voting page (kaohe/api/vote.py). The token comes in the fragment (#t=TOKEN),
// which the browser never sends: this script posts it, and nothing else ever holds it.
// No framework: the ballot is built with DOM calls and textContent (never innerHTML).
(function () {
  "use strict";

  var $ = function (id) { return document.getElementById(id); };
  var SCREENS = ["loading", "enter", "message", "ballot", "done"];
  var token = "";
  var unit = null;
  var questions = []; // {name, required, fieldset}
  var current = null; // the ballot shown

  function show(id) {
    SCREENS.forEach(function (s) { $(s).hidden = s !== id; });
    window.scrollTo(0, 0);
  }

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function tokenFromFragment() {
    var params = new URLSearchParams(location.hash.replace(/^#/, ""));
    return (params.get("t") || "").replace(/\s+/g, "");
  }

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
      referrerPolicy: "no-referrer",
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (data) {
        return { ok: r.ok, status: r.status, data: data };
      });
    }, function () {
      return { ok: false, status: 0, data: { code: "network", message: "网络连接失败，请检查网络后重试。" } };
    });
  }

  var TITLES = {
    token_unknown: "票码无效",
    token_missing: "缺少票码",
    token_foreign: "票码不属于本单位",
    token_spent: "票码已使用",
    not_open: "测评尚未开始",
    closed: "测评已结束",
    unavailable: "暂时无法受理",
    network: "网络连接失败",
  };

  function message(data) {
    $("message-title").textContent = TITLES[data.code] || "无法投票";
    $("message-text").textContent = data.message || data.detail || "请稍后重试。";
    $("message").dataset.code = data.code || "";
    show("message");
  }

  function showUnit(u) {
    unit = u;
    $("unit-name").textContent = u.name;
    $("unit-name").hidden = false;
  }

  function done(data) {
    showUnit(data.unit);
    var again = data.state !== "accepted";
    $("done-title").textContent = again ? "已提交" : "提交成功";
    $("done-text").textContent = again
      ? "这张票码已经投过票，每张票码只能提交一次。以下是当时的回执码。"
      : "您的票已收到，感谢参与。";
    $("receipt").textContent = data.receipt;
    $("receipts-link").setAttribute("href", data.receipts_page);
    $("done").dataset.state = data.state;
    show("done");
  }

  // ---- the ballot --------------------------------------------------------------------------

  function question(name, label, options, required) {
    var fs = el("fieldset", { class: "q", "data-name": name });
    fs.appendChild(el("legend", {}, required ? label : label + "（选填）"));
    var opts = el("div", { class: "opts" });
    options.forEach(function (option, i) {
      var id = name + "-" + i;
      opts.appendChild(el("input", { type: "radio", name: name, id: id, value: option }));
      opts.appendChild(el("label", { for: id }, option));
    });
    fs.appendChild(opts);
    questions.push({ name: name, required: required, fieldset: fs });
    return fs;
  }

  function section(title, note) {
    var s = el("section", { class: "card part" });
    s.appendChild(el("h2", {}, title));
    if (note) s.appendChild(el("p", { class: "small" }, note));
    return s;
  }

  function build(ballot) {
    var sections = $("sections");
    sections.textContent = "";
    questions = [];
    var optional = !ballot.items_mandatory;
    $("mandatory-hint").textContent = optional ? "标明“选填”的项目可不选。" : "每一项均须选择。";

    var team = ballot.team;
    var s = section("一、领导班子民主测评");
    s.appendChild(question("team.overall", "领导班子总体评价", team.options, true));
    if (team.dimensions.length) s.appendChild(el("h3", {}, "分项评价"));
    team.dimensions.forEach(function (item, i) {
      s.appendChild(question("team.d" + i, item, team.item_options, !optional));
    });
    if (team.focus_items.length) s.appendChild(el("h3", {}, "年度重点工作"));
    team.focus_items.forEach(function (item, i) {
      s.appendChild(question("team.f" + i, item, team.item_options, !optional));
    });
    sections.appendChild(s);

    s = section("二、领导干部民主测评");
    ballot.cadres.forEach(function (c, n) {
      var box = el("div", { class: "cadre", "data-cadre": c.cadre_id });
      var head = el("h3", {}, c.name);
      head.appendChild(el("span", { class: "position" }, c.position + (c.principal ? "（主要负责人）" : "")));
      box.appendChild(head);
      box.appendChild(question("c" + n + ".overall", "总体评价", c.options, true));
      c.items.forEach(function (item, i) {
        box.appendChild(question("c" + n + ".i" + i, item, c.item_options, !optional));
      });
      s.appendChild(box);
    });
    sections.appendChild(s);

    var part = 3;
    var numbers = ["三", "四"];
    if (ballot.selection_work) {
      s = section(numbers[part - 3] + "、选人用人工作民主评议");
      part += 1;
      ballot.selection_work.questions.forEach(function (q, i) {
        s.appendChild(question("s" + i, q, ballot.selection_work.options, true));
      });
      sections.appendChild(s);
    }
    if (ballot.new_cadres.length) {
      s = section(numbers[part - 3] + "、新提拔任用干部民主评议", "您对以下干部的选拔任用是否认同？");
      ballot.new_cadres.forEach(function (c, n) {
        var label = c.name + "（" + c.position + "）";
        s.appendChild(question("n" + n, label, c.options, true));
      });
      sections.appendChild(s);
    }
    updateProgress();
  }

  function value(name) {
    var checked = $("ballot").querySelector('input[name="' + name + '"]:checked');
    return checked ? checked.value : null;
  }

  function sheetOf(ballot) {
    var items = function (prefix, names) {
      var out = {};
      names.forEach(function (item, i) {
        var v = value(prefix + i);
        if (v !== null) out[item] = v;
      });
      return out;
    };
    var teamItems = items("team.d", ballot.team.dimensions);
    var focus = items("team.f", ballot.team.focus_items);
    Object.keys(focus).forEach(function (k) { teamItems[k] = focus[k]; });
    var sheet = {
      team: { overall: value("team.overall"), items: teamItems },
      cadres: ballot.cadres.map(function (c, n) {
        return { cadre_id: c.cadre_id, overall: value("c" + n + ".overall"), items: items("c" + n + ".i", c.items) };
      }),
    };
    if (ballot.selection_work) {
      sheet.selection_work = items("s", ballot.selection_work.questions);
      sheet.new_cadres = ballot.new_cadres.map(function (c, n) {
        return { cadre_id: c.cadre_id, opinion: value("n" + n) };
      });
    }
    return sheet;
  }

  function missing() {
    return questions.filter(function (q) { return q.required && value(q.name) === null; });
  }

  function updateProgress() {
    var required = questions.filter(function (q) { return q.required; }).length;
    var left = missing().length;
    $("progress").textContent = "已填 " + (required - left) + " / " + required;
  }

  function formError(text) {
    $("form-error").textContent = text;
    $("form-error").hidden = !text;
  }

  var wired = false;

  function open(ballot) {
    build(ballot);
    current = ballot;
    show("ballot");
    if (wired) return;
    wired = true;
    var form = $("ballot");
    form.addEventListener("change", function (event) {
      var fs = event.target.closest("fieldset");
      if (fs) fs.classList.remove("missing");
      updateProgress();
      if (!missing().length) formError("");
    });
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var left = missing();
      questions.forEach(function (q) { q.fieldset.classList.toggle("missing", left.indexOf(q) >= 0); });
      if (left.length) {
        formError("还有 " + left.length + " 项未选择，请补全后再提交。");
        left[0].fieldset.scrollIntoView({ block: "center" });
        return;
      }
      var button = $("submit");
      button.disabled = true;
      button.textContent = "正在提交…";
      formError("");
      post("/v1/vote", { token: token, unit: { campaign: unit.campaign, unit: unit.unit }, sheet: sheetOf(current) })
        .then(function (r) {
          button.disabled = false;
          button.textContent = "提交";
          if (r.ok) return done(r.data);
          var code = r.data.code;
          if (code === "sheet_invalid" || code === "network" || code === "unavailable" || !code) {
            // The token is still good: the rater may try again (a retry is never taken twice).
            formError(r.data.message || "提交失败，请重试。");
            return;
          }
          message(r.data);
        });
    });
  }

  function load() {
    show("loading");
    post("/v1/vote/ballot", { token: token }).then(function (r) {
      if (!r.ok) return message(r.data);
      if (r.data.state === "submitted") return done(r.data);
      showUnit(r.data.unit);
      $("title").textContent = r.data.title || "民主测评投票";
      document.title = ($("title").textContent) + " · " + r.data.unit.name;
      open(r.data.ballot);
    });
  }

  function start() {
    token = tokenFromFragment();
    if (token) return load();
    show("enter");
    $("enter-form").addEventListener("submit", function (event) {
      event.preventDefault();
      var typed = $("enter-token").value.replace(/\s+/g, "");
      if (!typed) return;
      // The fragment again, never the query: the token reaches no server log.
      location.hash = "t=" + encodeURIComponent(typed);
    });
    window.addEventListener("hashchange", function () {
      token = tokenFromFragment();
      if (token) load();
    });
  }

  start();
})();
