/* Nurture form embed: renders the form below into every <div data-nurture-form="ID"> and
   submits it with fetch, showing field errors from the API beside their inputs. */
(function (form, d) {
  "use strict";
  var INPUT_TYPES = { email: "email", phone: "tel", number: "number", text: "text" };

  function el(tag, attrs, text) {
    var node = d.createElement(tag);
    for (var key in attrs) if (attrs[key] != null && attrs[key] !== false) node.setAttribute(key, attrs[key]);
    if (text != null) node.textContent = text;
    return node;
  }

  function visitorId() {
    if (window.nurture && window.nurture.anonymousId) return window.nurture.anonymousId();
    var match = d.cookie.match(/(?:^|;\s*)nurture_aid=([^;]*)/);
    return match ? decodeURIComponent(match[1]) : null;
  }

  function checkbox(prefix, name, label, required) {
    var row = el("div", { "class": "nurture-field nurture-checkbox" });
    var id = prefix + name;
    row.appendChild(el("input", { type: "checkbox", id: id, name: name, value: "true", required: required }));
    row.appendChild(el("label", { "for": id }, label));
    row.appendChild(el("div", { "class": "nurture-error", "data-error-for": name, role: "alert" }));
    return row;
  }

  function field(prefix, spec) {
    if (spec.type === "hidden") return el("input", { type: "hidden", name: spec.name, value: spec["default"] || "" });
    if (spec.type === "checkbox") return checkbox(prefix, spec.name, spec.label || spec.name, spec.required);
    var row = el("div", { "class": "nurture-field" });
    var id = prefix + spec.name;
    row.appendChild(el("label", { "for": id }, (spec.label || spec.name) + (spec.required ? " *" : "")));
    var input;
    if (spec.type === "select") {
      input = el("select", { id: id, name: spec.name, required: spec.required });
      input.appendChild(el("option", { value: "" }, ""));
      spec.options.forEach(function (option) { input.appendChild(el("option", { value: option }, option)); });
    } else {
      input = el(spec.type === "textarea" ? "textarea" : "input", {
        id: id, name: spec.name, type: INPUT_TYPES[spec.type], required: spec.required,
        maxlength: spec.max_length, placeholder: spec.placeholder,
        autocomplete: { email: "email", phone: "tel" }[spec.type]
      });
    }
    row.appendChild(input);
    row.appendChild(el("div", { "class": "nurture-error", "data-error-for": spec.name, role: "alert" }));
    return row;
  }

  function render(target) {
    var prefix = "nurture-" + form.id.slice(0, 8) + "-";
    var node = el("form", { "class": "nurture-form", novalidate: "" });
    form.fields.forEach(function (spec) { node.appendChild(field(prefix, spec)); });
    form.consents.forEach(function (consent) {
      node.appendChild(checkbox(prefix, "consent_" + consent.channel, consent.text, consent.required));
    });
    // The honeypot: invisible to people, so only a bot fills it.
    var trap = el("div", { "aria-hidden": "true",
                           style: "position:absolute;left:-10000px;top:auto;width:1px;height:1px;overflow:hidden" });
    trap.appendChild(el("input", { type: "text", name: form.honeypot_field, tabindex: "-1", autocomplete: "off" }));
    node.appendChild(trap);
    var status = el("div", { "class": "nurture-status", role: "status" });
    var button = el("button", { type: "submit" }, form.submit_label);
    node.appendChild(button);
    node.appendChild(status);
    node.addEventListener("submit", function (event) {
      event.preventDefault();
      submit(target, node, button, status);
    });
    target.textContent = "";
    target.appendChild(node);
  }

  function submit(target, node, button, status) {
    var body = { nurture_aid: visitorId(), page_url: location.href };
    Array.prototype.forEach.call(node.elements, function (input) {
      if (input.name) body[input.name] = input.type === "checkbox" ? input.checked : input.value;
    });
    Array.prototype.forEach.call(node.querySelectorAll(".nurture-error"), function (e) { e.textContent = ""; });
    status.textContent = "";
    button.disabled = true;
    fetch(form.submit_url, { method: "POST", credentials: "omit", body: JSON.stringify(body),
                             headers: { "Content-Type": "application/json" } })
      .then(function (response) {
        return response.json().then(function (data) { return { ok: response.ok, data: data }; });
      })
      .then(function (result) {
        button.disabled = false;
        if (result.ok && result.data.redirect_url) {
          location.href = result.data.redirect_url;
        } else if (result.ok) {
          target.textContent = "";
          target.appendChild(el("p", { "class": "nurture-success", role: "status" }, result.data.message));
        } else {
          var error = result.data.error || {};
          for (var name in error.fields || {}) {
            var slot = node.querySelector('[data-error-for="' + name + '"]');
            if (slot) slot.textContent = error.fields[name];
          }
          status.textContent = error.message || "Something went wrong. Please try again.";
        }
      })
      .catch(function () {
        button.disabled = false;
        status.textContent = "Something went wrong. Please try again.";
      });
  }

  function renderAll() {
    var targets = d.querySelectorAll('[data-nurture-form="' + form.id + '"]');
    Array.prototype.forEach.call(targets, render);
  }

  if (d.readyState === "loading") d.addEventListener("DOMContentLoaded", renderAll);
  else renderAll();
})(__NURTURE_FORM__, document);
