/* vgpuctl's Cockpit page.
 *
 * Everything shown comes from the vgpuctl CLI's --json output (status, list, domains, sched show, doctor, place
 * --explain); every action is ONE vgpuctl call, its argv a list (never a shell), its values taken from those
 * listings, and its one-line error shown verbatim.  Data reaches the DOM only as text (textContent, attributes),
 * never as HTML.
 */
/* global cockpit */
const _ = cockpit.gettext;

const VGPUCTL = "vgpuctl";
const POLL_MS = 5000; // refresh while the page is visible
const DOCTOR_EVERY = 6; // the doctor is slower and changes rarely: every sixth refresh
const LOAD_START = performance.now();

// ---- running the CLI ---------------------------------------------------------------------------------------------

/* One vgpuctl call.  Resolves {ok, out, error, exit}: error is the CLI's one-line message (its last
 * "vgpuctl: error:" line, else its last stderr line), exit its exit status (null when it did not run). */
function run(args) {
    return new Promise(resolve => {
        cockpit.spawn([VGPUCTL, ...args], { superuser: "try", err: "message" })
                .then(out => resolve({ ok: true, out, error: null, exit: 0 }),
                      (ex, out) => resolve({
                          ok: false,
                          out: out || "",
                          error: errorLine(ex),
                          exit: ex && ex.exit_status !== undefined ? ex.exit_status : null,
                      }));
    });
}

function errorLine(ex) {
    if (ex && ex.problem === "not-found")
        return _("vgpuctl is not installed on this host (no vgpuctl command on the PATH)");
    const text = ex && ex.message ? String(ex.message) : cockpit.message(ex);
    const lines = text.split("\n").map(l => l.trim()).filter(l => l);
    const errors = lines.filter(l => l.startsWith("vgpuctl: error:"));
    if (errors.length)
        return errors[errors.length - 1];
    return lines.length ? lines[lines.length - 1] : cockpit.message(ex);
}

function parse(r) {
    if (!r.out)
        return null;
    try {
        return JSON.parse(r.out);
    } catch (e) {
        return null;
    }
}

// ---- the DOM, as text only -----------------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    return fill(node, attrs, children);
}

const SVG_NS = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
    return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

function fill(node, attrs, children) {
    for (const [k, v] of Object.entries(attrs || {})) {
        if (v === null || v === undefined || v === false)
            continue;
        if (k === "onclick")
            node.addEventListener("click", v);
        else if (k === "class")
            node.setAttribute("class", v);
        else
            node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
        if (c === null || c === undefined || c === false)
            continue;
        node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
}

function replace(id, ...children) {
    document.getElementById(id).replaceChildren(...children.flat().filter(c => c));
}

function alert(kind, title, text) {
    return h("p", { class: "vg-alert vg-alert-" + kind, "data-alert": title }, h("strong", {}, title), text);
}

function fmt(template, values) {
    return template.replace(/\$\{(\w+)\}/g, (_m, k) => String(values[k]));
}

// ---- the state read from the CLI -------------------------------------------------------------------------------

const state = {
    status: null, statusError: null,
    instances: null, listError: null,
    domains: null, domainsError: null,
    sched: null, schedError: null,
    doctor: undefined, doctorError: null, // undefined: not asked yet; null: no doctor command
    refreshes: 0,
    busy: false,
    again: false,
    doctorBusy: false,
};

/* One read of every listing, each rendered as soon as it arrives (the GPU pictures need only status). */
async function refresh() {
    if (state.busy) { // one read at a time; a refresh asked for meanwhile runs right after it
        state.again = true;
        return;
    }
    state.busy = true;
    state.again = false;
    try {
        const askDoctor = state.refreshes % DOCTOR_EVERY === 0 && state.doctor !== null;
        const status = run(["status", "--json"]).then(r => {
            state.status = parse(r);
            state.statusError = r.ok ? null : r.error;
            renderAlerts();
            renderGpus();
        });
        if (state.refreshes === 0)
            await status; // the first pictures do not share the CPU with the other listings
        await Promise.all([
            status,
            run(["list", "--json"]).then(r => {
                state.instances = parse(r);
                state.listError = r.ok ? null : r.error;
                renderAlerts();
                renderInstances();
            }),
            run(["domains", "--json"]).then(r => {
                state.domains = r.ok ? parse(r) : null;
                state.domainsError = r.ok ? null : r.error;
                renderAlerts();
                renderInstances();
            }),
            run(["sched", "show", "--json"]).then(r => {
                state.sched = parse(r);
                state.schedError = r.ok ? null : r.error;
                renderAlerts();
                renderSched();
            }),
        ]);
        if (askDoctor)
            askTheDoctor();
        state.refreshes += 1;
        render(); // once more with everything: slot tooltips name domains from list, actions need domains
        document.body.dataset.refreshes = String(state.refreshes);
    } finally {
        state.busy = false;
    }
    if (state.again)
        await refresh();
}

/* The doctor's checks wait on peers (libvirt's QEMU probe may take 30 s): never part of a refresh's wait. */
function askTheDoctor() {
    if (state.doctorBusy)
        return;
    state.doctorBusy = true;
    run(["doctor", "--json"]).then(r => {
        state.doctorBusy = false;
        if (!r.ok && r.exit === 2 && /No such command/.test(r.error || "")) {
            state.doctor = null; // this vgpuctl has no doctor: do not ask again
            state.doctorError = null;
        } else {
            state.doctor = parse(r);
            state.doctorError = r.ok ? null : r.error;
        }
        renderDoctor();
    });
}

// what the listings say about libvirt and NVML
function libvirtState() {
    const recs = [...(state.instances || []), ...(state.status || [])];
    const down = recs.map(r => r && r.libvirt_error).find(e => e);
    if (down)
        return { state: "unreachable", why: down };
    if (state.domainsError) {
        if (/needs libvirt/.test(state.domainsError))
            return { state: "off", why: state.domainsError };
        return { state: "unreachable", why: state.domainsError };
    }
    return { state: "ok", why: null };
}

function nvmlState() {
    if (state.schedError)
        return { state: /NVML/.test(state.schedError) ? "unreachable" : "error", why: state.schedError };
    return { state: "ok", why: null };
}

// ---- rendering ---------------------------------------------------------------------------------------------------

const SLOT_TEXT = {
    used: _("used"),
    free: _("free"),
    restricted: _("free for the held type only"),
    blocked: _("unusable (type mix or the type's maximum)"),
};

function render() {
    renderAlerts();
    renderGpus();
    renderInstances();
    renderSched();
    renderDoctor();
}

function renderAlerts() {
    const out = [];
    if (state.statusError)
        out.push(alert("danger", _("vgpuctl status failed:"), state.statusError));
    if (state.listError)
        out.push(alert("danger", _("vgpuctl list failed:"), state.listError));
    const lv = libvirtState();
    if (lv.state === "unreachable")
        out.push(alert("warning", _("libvirt unreachable:"), lv.why));
    else if (lv.state === "off")
        out.push(alert("info", _("libvirt not used:"), lv.why));
    const nv = nvmlState();
    if (nv.state === "unreachable")
        out.push(alert("info", _("NVML unreachable:"), nv.why));
    replace("alerts", out);
    document.body.dataset.libvirt = lv.state;
    document.body.dataset.nvml = nv.state;
}

function gpus() {
    return (state.status || []).filter(r => r.schema === "vgpuctl.status-gpu/v1");
}

function hostRecord() {
    return (state.status || []).find(r => r.schema === "vgpuctl.status-host/v1") || null;
}

function renderGpus() {
    const host = hostRecord();
    const summary = document.getElementById("host-summary");
    if (host) {
        summary.textContent = fmt(_("${gpus} GPUs (${empty} empty), ${n} vGPUs; fragmentation ${frag}% (${bad} of ${free} MiB free cannot hold the largest allowed type)"), {
            gpus: host.gpus, empty: host.gpus_empty, n: host.instances,
            frag: Math.round(100 * host.fragmentation),
            bad: host.framebuffer_unusable_mib, free: host.framebuffer_free_mib,
        });
        summary.dataset.fragmentation = String(host.fragmentation);
    }
    const list = gpus();
    if (!state.status) {
        replace("gpus", h("p", { class: "vg-muted" }, _("No GPU picture: vgpuctl status gave nothing to show.")));
        return;
    }
    if (!list.length) {
        replace("gpus", h("p", { class: "vg-muted" }, _("This host has no vGPU-capable GPU.")));
        return;
    }
    replace("gpus", list.map(gpuCard));
    if (!document.body.dataset.firstPictureMs) {
        const t = performance.now();
        performance.mark("vgpuctl-first-picture");
        document.body.dataset.firstPictureMs = String(Math.round(t));
        document.body.dataset.loadToPictureMs = String(Math.round(t - LOAD_START));
    }
}

function slotPicture(g) {
    const n = g.slots.length;
    const perRow = n > 16 ? 16 : n;
    const rows = Math.ceil(n / perRow) || 1;
    const w = 26, gap = 4;
    const svg = s("svg", {
        class: "vg-slots",
        viewBox: `0 0 ${perRow * (w + gap)} ${rows * (w + gap)}`,
        role: "img",
        "aria-label": fmt(_("${gpu}: ${used} of ${n} slots used"), { gpu: g.gpu, used: g.slots_used, n }),
        "data-picture": g.gpu,
    });
    g.slots.forEach((slot, i) => {
        const x = (i % perRow) * (w + gap), y = Math.floor(i / perRow) * (w + gap);
        const owner = slot.uuid ? (state.instances || []).find(x => x.uuid === slot.uuid) : null;
        const tip = [SLOT_TEXT[slot.state] || slot.state, slot.uuid, owner && owner.type_name,
            owner && owner.domains && owner.domains.length ? owner.domains.join(", ") : null,
            slot.parent].filter(t => t).join(" · ");
        const grp = s("g", { "data-slot": i, "data-state": slot.state, "data-uuid": slot.uuid },
                      s("title", {}, tip),
                      s("rect", { class: "vg-slot-" + slot.state, x: x + 1, y: y + 1, width: w - 2, height: w - 2, rx: 3 }));
        if (slot.label)
            grp.append(s("text", { class: "vg-slot-label", x: x + w / 2, y: y + w / 2 + 4, "text-anchor": "middle" }, slot.label));
        svg.append(grp);
    });
    return svg;
}

function gpuCard(g) {
    const left = g.capacity.map(c => h("li", { class: "vg-chip" + (c.left ? "" : " vg-chip-zero"), "data-type": c.type_name },
                                       `${c.type_name} ${c.left}`));
    const held = g.instances && g.instances.length ? g.instances.map(i => i.type_name).filter((v, i, a) => a.indexOf(v) === i) : [];
    return h("article", { class: "vg-card vg-gpu", "data-gpu": g.gpu },
             h("div", { class: "vg-gpu-head" },
               h("h3", {}, h("span", { class: "vg-mono" }, g.gpu), " ", g.model || ""),
               h("button", { class: "vg-btn vg-btn-secondary", type: "button", "data-action": "create", onclick: () => createDialog(g) },
                 _("Create vGPU…"))),
             h("p", { class: "vg-gpu-meta vg-muted" },
               [g.kind, g.mode, g.numa_node !== null && g.numa_node !== undefined ? fmt(_("NUMA ${n}"), { n: g.numa_node }) : null,
                   fmt(_("rule ${r}"), { r: g.rule }), fmt(_("1 slot = ${u}"), { u: g.slot_unit })].filter(x => x).join(" · ")),
             slotPicture(g),
             instanceLegend(g),
             h("ul", { class: "vg-legend" },
               h("li", { class: "vg-k-used" }, fmt(_("used ${n}"), { n: g.slots_used })),
               h("li", { class: "vg-k-free" }, fmt(_("free ${n}"), { n: g.slots_free })),
               h("li", { class: "vg-k-restricted" }, fmt(_("free for ${t} only ${n}"), { t: held.join(", ") || _("the held type"), n: g.slots_restricted })),
               h("li", { class: "vg-k-blocked" }, fmt(_("unusable ${n}"), { n: g.slots_blocked }))),
             h("dl", { class: "vg-dl" },
               h("dt", {}, _("Framebuffer")),
               h("dd", { "data-field": "framebuffer" }, fmt(_("${used} of ${total} MiB used, ${free} free"), {
                   used: g.framebuffer_used_mib, total: g.framebuffer_total_mib, free: g.framebuffer_free_mib,
               })),
               h("dt", {}, _("Largest allowed")),
               h("dd", {}, g.largest_allowed ? fmt(_("${t} (${n} fit; ${bad} MiB free but unusable for it)"), {
                   t: g.largest_allowed, n: g.largest_allowed_left, bad: g.framebuffer_unusable_mib,
               }) : _("nothing fits")),
               h("dt", {}, _("Capacity left")),
               h("dd", {}, h("ul", { class: "vg-chips", "data-field": "capacity" }, left))));
}

function instanceLegend(g) {
    if (!g.instances || !g.instances.length)
        return null;
    return h("ul", { class: "vg-chips vg-instance-legend", "data-field": "labels" },
             g.instances.map(i => {
                 const rec = (state.instances || []).find(x => x.uuid === i.uuid);
                 const doms = rec && rec.domains && rec.domains.length ? " → " + rec.domains.join(", ") : "";
                 return h("li", { class: "vg-chip", title: i.uuid }, h("strong", {}, i.label), ` ${i.type_name} ${i.uuid.slice(0, 8)}${doms}`);
             }));
}

function domainOf(name) {
    return (state.domains || []).find(d => d.name === name) || null;
}

function renderInstances() {
    const list = state.instances;
    if (!list) {
        replace("instances", h("p", { class: "vg-muted" }, state.listError || _("Reading…")));
        return;
    }
    if (!list.length) {
        replace("instances", h("p", { class: "vg-muted", "data-empty": "instances" }, _("No vGPU instances on this host.")));
        return;
    }
    const lv = libvirtState();
    const rows = list.map(i => {
        const doms = i.domains; // null: libvirt not asked or unreachable
        const domText = doms === null || doms === undefined
            ? (lv.state === "unreachable" ? _("unknown (libvirt unreachable)") : _("unknown (libvirt not used)"))
            : (doms.length ? doms.join(", ") : "—");
        const running = i.running === null || i.running === undefined ? _("unknown") : (i.running ? _("running") : _("not running"));
        const util = ["sm_util", "mem_util", "enc_util", "dec_util"].filter(k => i[k] !== null && i[k] !== undefined)
                .map(k => `${k.replace("_util", "")} ${i[k]}%`).join(", ");
        return h("tr", { "data-uuid": i.uuid },
                 h("td", { class: "vg-mono" }, i.uuid),
                 h("td", {}, i.type_name || i.type_id),
                 h("td", { class: "vg-mono" }, i.parent),
                 h("td", {}, i.owned ? _("vgpuctl") : _("foreign (not made by vgpuctl)")),
                 h("td", { "data-field": "domains" }, domText),
                 h("td", {}, running, i.used_by && i.used_by.length ? h("div", { class: "vg-muted vg-reason" }, i.used_by.join(", ")) : null),
                 h("td", {}, util || (i.fb_used_mib !== null && i.fb_used_mib !== undefined ? `fb ${i.fb_used_mib} MiB` : "—")),
                 h("td", {}, h("div", { class: "vg-actions" }, instanceActions(i, lv))));
    });
    replace("instances", h("table", { class: "vg-table" },
                           h("thead", {}, h("tr", {}, [_("UUID"), _("Type"), _("Parent"), _("Owner"), _("Domains"), _("State"), _("Utilization"), _("Actions")].map(t => h("th", {}, t)))),
                           h("tbody", {}, rows)));
}

/* Only actions the CLI would not refuse for a reason already shown here; the reason stands in for the rest. */
function instanceActions(i, lv) {
    const out = [];
    const doms = i.domains || [];
    const held = (i.used_by && i.used_by.length) || doms.length;
    if (!i.owned)
        out.push(h("span", { class: "vg-muted vg-reason" }, _("not made by vgpuctl: destroy it by hand with --foreign")));
    else if (held)
        out.push(h("span", { class: "vg-muted vg-reason" }, _("in use: detach it first")));
    else if ((i.domains === null || i.domains === undefined) && lv.state === "unreachable")
        out.push(h("span", { class: "vg-muted vg-reason" }, _("libvirt unreachable: cannot tell whether a domain uses it")));
    else
        out.push(h("button", { class: "vg-btn vg-btn-danger", type: "button", "data-action": "destroy", onclick: () => destroyDialog(i) }, _("Destroy")));
    if (lv.state === "ok") {
        if (!doms.length && state.domains && state.domains.length)
            out.push(h("button", { class: "vg-btn vg-btn-secondary", type: "button", "data-action": "attach", onclick: () => attachDialog(i) }, _("Attach…")));
        for (const name of doms) {
            const d = domainOf(name);
            if (d && d.managed.includes(i.uuid))
                out.push(h("button", { class: "vg-btn vg-btn-secondary", type: "button", "data-action": "detach", "data-domain": name, onclick: () => detachDialog(i, name) },
                           fmt(_("Detach from ${d}"), { d: name })));
            else
                out.push(h("span", { class: "vg-muted vg-reason" }, fmt(_("attached to ${d} outside vgpuctl"), { d: name })));
        }
    }
    return out;
}

function renderSched() {
    if (state.schedError) {
        replace("sched", h("p", { class: "vg-muted", "data-field": "sched" }, state.schedError));
        return;
    }
    const recs = state.sched || [];
    if (!recs.length) {
        replace("sched", h("p", { class: "vg-muted", "data-field": "sched" }, _("No GPU reports a vGPU scheduler.")));
        return;
    }
    const keys = Object.keys(recs[0]).filter(k => k !== "schema");
    replace("sched", h("table", { class: "vg-table", "data-field": "sched" },
                       h("thead", {}, h("tr", {}, keys.map(k => h("th", {}, k.replace(/_/g, " "))))),
                       h("tbody", {}, recs.map(r => h("tr", {}, keys.map(k => h("td", {}, show(r[k]))))))));
}

function show(v) {
    if (v === null || v === undefined)
        return "—";
    if (Array.isArray(v))
        return v.map(show).join(", ");
    if (typeof v === "object")
        return JSON.stringify(v);
    return String(v);
}

function renderDoctor() {
    if (state.doctor === undefined) {
        replace("doctor", h("p", { class: "vg-muted" }, _("Asking vgpuctl doctor…")));
        return;
    }
    if (state.doctor === null && !state.doctorError) {
        replace("doctor", h("p", { class: "vg-muted", "data-field": "doctor", "data-doctor": "absent" },
                            _("This vgpuctl has no doctor command yet; the checks above are all the page can show.")));
        return;
    }
    const recs = Array.isArray(state.doctor) ? state.doctor : (state.doctor ? [state.doctor] : []);
    const out = [];
    if (state.doctorError)
        out.push(alert(/ fail/.test(state.doctorError) ? "danger" : "warning", _("vgpuctl doctor:"), state.doctorError));
    const counts = {};
    for (const r of recs)
        counts[r.status] = (counts[r.status] || 0) + 1;
    if (recs.length)
        out.push(h("p", { "data-field": "doctor-summary" },
                    Object.entries(counts).map(([k, n]) => `${n} ${k}`).join(", ")));
    const notOk = recs.filter(r => r.status !== "ok" && r.status !== "n/a");
    if (notOk.length) {
        const keys = ["check", "status", "subject", "seen", "fix"];
        out.push(h("table", { class: "vg-table" },
                   h("thead", {}, h("tr", {}, [_("Check"), _("Status"), _("Subject"), _("Seen"), _("Fix")].map(t => h("th", {}, t)))),
                   h("tbody", {}, notOk.map(r => h("tr", { "data-check": r.check, "data-status": r.status },
                                                   keys.map(k => h("td", {}, show(r[k]))))))));
    } else if (recs.length) {
        out.push(h("p", { class: "vg-muted" }, _("Every check that applies here passes.")));
    }
    replace("doctor", h("div", { "data-field": "doctor", "data-doctor": "present" }, out));
}

// ---- actions: each one vgpuctl call ------------------------------------------------------------------------------

const dialog = document.getElementById("dialog");
let dialogAction = null;

function openDialog(title, okText, body, action) {
    document.getElementById("dialog-title").textContent = title;
    document.getElementById("dialog-ok").textContent = okText;
    document.getElementById("dialog-body").replaceChildren(...[body].flat().filter(c => c));
    const err = document.getElementById("dialog-error");
    err.hidden = true;
    err.textContent = "";
    dialogAction = action;
    document.getElementById("dialog-ok").disabled = !action;
    replace("action-result");
    if (!dialog.open)
        dialog.showModal();
}

document.getElementById("dialog-cancel").addEventListener("click", () => dialog.close());
document.getElementById("dialog-form").addEventListener("submit", async ev => {
    ev.preventDefault();
    if (!dialogAction)
        return;
    const ok = document.getElementById("dialog-ok");
    ok.disabled = true;
    const r = await dialogAction();
    ok.disabled = false;
    if (r && !r.ok) {
        const err = document.getElementById("dialog-error");
        err.textContent = r.error; // the CLI's one line, verbatim
        err.hidden = false;
        await refresh();
        return;
    }
    dialog.close();
    await refresh();
});

function result(r, done) {
    if (r.ok)
        replace("action-result", alert("success", _("Done:"), done));
    return r;
}

async function createDialog(g) {
    openDialog(fmt(_("Create a vGPU on ${gpu}"), { gpu: g.gpu }), _("Create"),
               h("p", { class: "vg-muted" }, _("Asking vgpuctl place --explain which types this GPU can take…")), null);
    const types = g.capacity.map(c => c.type_id);
    const r = await run(["place", "--explain", "--json", ...types.flatMap(t => ["--type", t])]);
    const recs = parse(r);
    if (!recs) {
        openDialog(fmt(_("Create a vGPU on ${gpu}"), { gpu: g.gpu }), _("Create"),
                   alert("danger", _("vgpuctl place failed:"), r.error || _("no answer")), null);
        return;
    }
    // records come as: placement(type A), verdicts(A)..., placement(type B), verdicts(B)...
    const options = [];
    let current = null;
    for (const rec of recs) {
        if (rec.schema === "vgpuctl.placement/v1")
            current = rec.type;
        else if (rec.schema === "vgpuctl.placement-verdict/v1" && rec.gpu === g.gpu)
            options.push({ type: current, verdict: rec });
    }
    const byId = Object.fromEntries(g.capacity.map(c => [c.type_id, c]));
    const list = h("ul", { class: "vg-options", "data-field": "types" });
    let first = true;
    for (const { type, verdict } of options) {
        const cap = byId[type] || {};
        const name = cap.type_name || verdict.type_name || type;
        const ok = verdict.verdict === "ok" && verdict.parent;
        const input = h("input", { type: "radio", name: "type", value: type, disabled: !ok, checked: ok && first, "data-parent": verdict.parent });
        if (ok)
            first = false;
        list.append(h("li", { class: ok ? "" : "vg-refused", "data-type": name, "data-verdict": verdict.verdict },
                      h("label", {}, input, h("span", {}, name),
                        h("span", { class: "vg-reason vg-muted" },
                          ok ? verdict.detail : `${verdict.reason}: ${verdict.detail || ""}`))));
    }
    const anyOk = options.some(o => o.verdict.verdict === "ok" && o.verdict.parent);
    openDialog(fmt(_("Create a vGPU on ${gpu}"), { gpu: g.gpu }), _("Create"),
               [h("p", { class: "vg-muted" }, _("Types this GPU can take now, from vgpuctl place --explain; the others say why not.")), list],
               anyOk
                   ? () => {
                       const sel = list.querySelector("input[name=type]:checked");
                       if (!sel)
                           return Promise.resolve({ ok: false, error: _("Choose a type.") });
                       const args = ["create", "--parent", sel.dataset.parent, "--type", sel.value, "--json"];
                       return run(args).then(r => {
                           const made = parse(r) || {};
                           return result(r, fmt(_("created ${u} (${t}) on ${p}"), {
                               u: made.uuid || "", t: made.type_name || sel.value, p: sel.dataset.parent,
                           }));
                       });
                   }
                   : null);
}

function destroyDialog(i) {
    openDialog(_("Destroy vGPU"), _("Destroy"),
               h("p", {}, fmt(_("Destroy ${uuid} (${type} on ${parent})?"), { uuid: i.uuid, type: i.type_name || i.type_id, parent: i.parent })),
               () => run(["destroy", i.uuid]).then(r => result(r, fmt(_("destroyed ${u}"), { u: i.uuid }))));
}

function attachDialog(i) {
    const select = h("select", { class: "vg-select", id: "attach-domain", "data-field": "domain" },
                     (state.domains || []).map(d => h("option", { value: d.name }, `${d.name} (${d.state})`)));
    openDialog(_("Attach vGPU to a domain"), _("Attach"),
               [h("p", {}, fmt(_("Attach ${uuid} (${type}) to:"), { uuid: i.uuid, type: i.type_name || i.type_id })), select,
                   h("p", { class: "vg-muted vg-reason" }, _("A running domain gets it live, a shut-off one in its definition (vgpuctl attach's default)."))],
               () => run(["attach", select.value, "--uuid", i.uuid, "--json"])
                       .then(r => result(r, fmt(_("attached ${u} to ${d}"), { u: i.uuid, d: select.value }))));
}

function detachDialog(i, name) {
    openDialog(_("Detach vGPU"), _("Detach"),
               h("p", {}, fmt(_("Detach ${uuid} from ${d}?"), { uuid: i.uuid, d: name })),
               () => run(["detach", name, "--uuid", i.uuid, "--json"])
                       .then(r => result(r, fmt(_("detached ${u} from ${d}"), { u: i.uuid, d: name }))));
}

// ---- start -------------------------------------------------------------------------------------------------------

cockpit.translate();
refresh();
let timer = window.setInterval(() => { if (!cockpit.hidden && !dialog.open) refresh(); }, POLL_MS);
cockpit.addEventListener("visibilitychange", () => {
    if (!cockpit.hidden)
        refresh();
});
window.addEventListener("unload", () => window.clearInterval(timer));
