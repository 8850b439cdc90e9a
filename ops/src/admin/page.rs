//! The status page: a [`ClusterStatus`] as one small server-rendered HTML document (inline
//! CSS, no script, no external asset; it reloads itself every few seconds with a `refresh`
//! meta tag). Every value shown comes from the escaped [`ClusterStatus`].

use std::fmt::Write as _;

use super::cluster::{ClusterStatus, LogRow, NodeRow};

/// Most log rows rendered; the rest are counted.
pub const MAX_PAGE_LOGS: usize = 500;
/// Seconds between reloads.
const REFRESH_SECS: u32 = 5;

const STYLE: &str = r#"
:root { --fg:#1d2433; --muted:#667085; --line:#e4e7ec; --bg:#f6f7f9; --card:#fff;
        --ok:#067647; --okbg:#dcfae6; --warn:#b54708; --warnbg:#fef0c7; --bad:#b42318; --badbg:#fee4e2; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg); background:var(--bg); }
header { background:#101828; color:#fff; padding:14px 28px; display:flex; align-items:baseline; gap:18px; }
header h1 { font-size:18px; margin:0; letter-spacing:.02em; }
header .sub { color:#d0d5dd; font-size:13px; }
main { padding:20px 28px 40px; max-width:1400px; }
.cards { display:flex; gap:14px; flex-wrap:wrap; margin-bottom:22px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px 16px; min-width:150px; }
.card .v { font-size:22px; font-weight:600; }
.card .k { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
h2 { font-size:15px; margin:24px 0 8px; }
table { border-collapse:collapse; width:100%; background:var(--card); border:1px solid var(--line); border-radius:8px; overflow:hidden; }
th, td { text-align:left; padding:7px 9px; border-bottom:1px solid var(--line); white-space:nowrap; }
th { background:#f9fafb; color:var(--muted); font-weight:600; font-size:11px; text-transform:uppercase; letter-spacing:.02em; }
.scroll { overflow-x:auto; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
tr:last-child td { border-bottom:none; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600; }
.ok { color:var(--ok); background:var(--okbg); } .warn { color:var(--warn); background:var(--warnbg); }
.bad { color:var(--bad); background:var(--badbg); }
.muted { color:var(--muted); } .mono { font-family:ui-monospace,SFMono-Regular,Menlo,monospace; font-size:13px; }
ul.problems { margin:6px 0 0; padding-left:18px; color:var(--bad); }
footer { color:var(--muted); font-size:12px; margin-top:26px; }
a { color:#175cd3; text-decoration:none; } a:hover { text-decoration:underline; }
"#;

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `1.5 GiB`, `12 KiB`, `900 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `3d 4h`, `2h 5m`, `4m 10s`, `9s`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// A rate for people: `0`, `3.2/s`, `1250/s`.
pub fn rate(r: f64) -> String {
    if r == 0.0 {
        "0".to_owned()
    } else if r < 100.0 {
        format!("{r:.1}/s")
    } else {
        format!("{r:.0}/s")
    }
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "–".to_owned(), f)
}

fn badge(class: &str, text: &str) -> String {
    format!("<span class=\"badge {class}\">{}</span>", escape(text))
}

fn node_health(n: &NodeRow) -> String {
    if !n.reachable {
        badge("bad", "unreachable")
    } else if !n.healthy {
        badge("bad", "unhealthy")
    } else if !n.ready {
        badge("warn", "not ready")
    } else {
        badge("ok", "ok")
    }
}

fn state_badge(state: &str) -> String {
    let class = match state {
        "read_write" => "ok",
        "provisioning" | "read_only" => "warn",
        _ => "bad",
    };
    badge(class, state)
}

fn log_state(l: &LogRow) -> String {
    if l.preempted {
        badge("warn", "preempted")
    } else if l.recovering {
        badge("warn", "recovering")
    } else if l.sequencer.is_some() {
        badge("ok", "running")
    } else {
        "<span class=\"muted\">idle</span>".to_owned()
    }
}

/// Renders the page. `this` is the node serving it: `(id, roles, version, uptime secs)`.
pub fn render(status: &ClusterStatus, this: (u32, &str, &str, u64)) -> String {
    let (me, my_roles, version, uptime) = this;
    let mut h = String::with_capacity(16 * 1024);
    let reachable = status.nodes.iter().filter(|n| n.reachable).count();
    let healthy = status
        .nodes
        .iter()
        .filter(|n| n.reachable && n.healthy && n.ready)
        .count();
    let running = status.logs.iter().filter(|l| l.sequencer.is_some()).count();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <title>Tally status — node {me}</title><style>{STYLE}</style></head><body>\
         <header><h1>Tally</h1><span class=\"sub\">cluster status · served by node {me} \
         ({}) · tally {} · up {}</span></header><main>",
        escape(my_roles),
        escape(version),
        duration(uptime),
    );
    let nodes_class = if healthy == status.nodes.len() {
        ""
    } else {
        " bad"
    };
    let _ = write!(
        h,
        "<div class=\"cards\">\
         <div class=\"card\" id=\"card-nodes\"><div class=\"k\">nodes healthy</div><div class=\"v{nodes_class}\">{healthy} / {}</div></div>\
         <div class=\"card\"><div class=\"k\">nodes reachable</div><div class=\"v\">{reachable}</div></div>\
         <div class=\"card\" id=\"card-logs\"><div class=\"k\">logs (running)</div><div class=\"v\">{} ({running})</div></div>\
         <div class=\"card\" id=\"card-appends\"><div class=\"k\">appends</div><div class=\"v\">{}</div></div>\
         <div class=\"card\"><div class=\"k\">copies stored</div><div class=\"v\">{}</div></div>\
         </div>",
        status.nodes.len(),
        status.logs.len(),
        rate(status.append_rate),
        rate(status.store_rate),
    );

    h.push_str(
        "<h2>Nodes</h2><div class=\"scroll\"><table id=\"nodes\"><thead><tr><th>node</th><th>address</th>\
         <th>roles</th><th>membership</th><th>health</th><th class=\"num\">uptime</th>\
         <th class=\"num\">appends</th><th class=\"num\">logs</th><th class=\"num\">stores</th>\
         <th class=\"num\">queue</th><th class=\"num\">readers</th><th class=\"num\">partitions</th>\
         <th class=\"num\">stored</th><th class=\"num\">free disk</th></tr></thead><tbody>",
    );
    for n in &status.nodes {
        // The node's own status page, where it has an admin port.
        let id = n.admin.as_deref().map_or_else(
            || format!("<b>{}</b>", n.id),
            |a| format!("<a href=\"http://{}/\"><b>{}</b></a>", escape(a), n.id),
        );
        let _ = write!(
            h,
            "<tr id=\"node-{}\"><td>{id}{me_mark}</td><td class=\"mono\">{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td></tr>",
            n.id,
            escape(&n.address),
            escape(&n.roles),
            state_badge(&n.membership_state),
            node_health(n),
            if n.reachable {
                duration(n.uptime_secs)
            } else {
                "–".to_owned()
            },
            opt(n.append_rate, rate),
            opt(n.logs_running, |v| v.to_string()),
            opt(n.store_rate, rate),
            opt(n.stores_in_flight, |v| v.to_string()),
            opt(n.read_streams_open, |v| v.to_string()),
            opt(n.partitions, |v| v.to_string()),
            opt(n.stored_bytes, bytes),
            opt(n.free_disk_bytes, bytes),
            me_mark = if n.id == me {
                " <span class=\"muted\">(this)</span>"
            } else {
                ""
            },
        );
        let mut problems: Vec<String> = n.problems.clone();
        problems.extend(n.error.iter().cloned());
        if !problems.is_empty() {
            let _ = write!(
                h,
                "<tr><td></td><td colspan=\"13\"><ul class=\"problems\">{}</ul></td></tr>",
                problems
                    .iter()
                    .map(|p| format!("<li>{}</li>", escape(p)))
                    .collect::<String>()
            );
        }
    }
    h.push_str("</tbody></table></div>");

    h.push_str(
        "<h2>Logs</h2><div class=\"scroll\"><table id=\"logs\"><thead><tr><th class=\"num\">log</th><th>state</th>\
         <th class=\"num\">epoch</th><th class=\"num\">sequencer</th><th class=\"num\">R</th>\
         <th>node set</th><th class=\"num\">last clean epoch</th><th class=\"num\">last released</th>\
         <th class=\"num\">release lag</th><th class=\"num\">appends</th></tr></thead><tbody>",
    );
    for l in status.logs.iter().take(MAX_PAGE_LOGS) {
        let node_set = if l.node_set.is_empty() {
            "–".to_owned()
        } else {
            l.node_set
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = write!(
            h,
            "<tr id=\"log-{}\"><td class=\"num\"><b>{}</b></td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num mono\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            l.log,
            l.log,
            log_state(l),
            if l.epoch == 0 {
                "–".to_owned()
            } else {
                l.epoch.to_string()
            },
            opt(l.sequencer, |v| v.to_string()),
            l.replication,
            escape(&node_set),
            l.last_clean_epoch,
            opt(l.last_released.as_deref(), escape),
            opt(l.unreleased, |v| v.to_string()),
            rate(l.append_rate),
        );
    }
    if status.logs.len() > MAX_PAGE_LOGS {
        let _ = write!(
            h,
            "<tr><td colspan=\"10\" class=\"muted\">… and {} more logs (see <span class=\"mono\">tally status --json</span>)</td></tr>",
            status.logs.len() - MAX_PAGE_LOGS
        );
    }
    if status.logs.is_empty() {
        h.push_str("<tr><td colspan=\"10\" class=\"muted\">no logs</td></tr>");
    }
    h.push_str("</tbody></table></div>");
    if let Some(e) = &status.logs_error {
        let _ = write!(
            h,
            "<ul class=\"problems\"><li>logs: {}</li></ul>",
            escape(e)
        );
    }
    let _ = writeln!(
        h,
        "<footer>Rates are over the last few seconds. Release lag: LSNs granted and not yet \
         released in the running epoch. Also here: <a href=\"/metrics\">/metrics</a> · \
         <a href=\"/health\">/health</a> · <a href=\"/ready\">/ready</a> · \
         <a href=\"/status.json\">/status.json</a>. Reloads every {REFRESH_SECS} s.</footer>\
         </main></body></html>"
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_format_for_people() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(bytes(900), "900 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(3 * 86_400 + 4 * 3600 + 5), "3d 4h");
        assert_eq!(rate(0.0), "0");
        assert_eq!(rate(3.25), "3.2/s");
        assert_eq!(rate(1250.4), "1250/s");
    }
}
