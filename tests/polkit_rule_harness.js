// Runs a polkit .rules file as polkitd would (its rules call polkit.addRule(function (action, subject) ...)),
// in a fresh context with nothing but a `polkit` object, and prints the decision for each case as JSON.
// Usage: node polkit_rule_harness.js RULES_FILE < cases.json
//   cases: [{"action": "org.freedesktop.systemd1.manage-units", "user": "trading-ops", "groups": [],
//            "details": {"unit": "x.service", "verb": "restart"}}, ...]  ->  ["yes", "not_handled", "no", ...]
"use strict";
const fs = require("fs");
const vm = require("vm");

const RESULT = {
    NO: "no", YES: "yes", AUTH_SELF: "auth_self", AUTH_SELF_KEEP: "auth_self_keep",
    AUTH_ADMIN: "auth_admin", AUTH_ADMIN_KEEP: "auth_admin_keep", NOT_HANDLED: null,
};
const rules = [];
const polkit = {
    Result: RESULT,
    addRule: (fn) => rules.push(fn),
    addAdminRule: () => {},
    log: (msg) => process.stderr.write(`polkit.log: ${msg}\n`),
    spawn: () => { throw new Error("polkit.spawn is not allowed in this rule"); },
};
vm.runInNewContext(fs.readFileSync(process.argv[2], "utf8"), { polkit }, { filename: process.argv[2] });
if (rules.length === 0) throw new Error("the file adds no rule");

const cases = JSON.parse(fs.readFileSync(0, "utf8"));
const decisions = cases.map((c) => {
    const details = c.details || {};
    const action = { id: c.action, lookup: (key) => (key in details ? details[key] : undefined) };
    const subject = {
        user: c.user, groups: c.groups || [], local: true, active: true, pid: 4242,
        isInGroup: (g) => (c.groups || []).includes(g), isInNetGroup: () => false,
    };
    for (const rule of rules) {
        const result = rule(action, subject);
        if (result !== null && result !== undefined) return result;
    }
    return "not_handled";
});
process.stdout.write(JSON.stringify(decisions));
