#!/usr/bin/env python3
"""Check the operator kit (deploy/) against what resil really exports. Prints TAP.

usage: check_ops.py prometheus|grafana|cloudwatch --exporter OPS_EXPORTS --root SRC

OPS_EXPORTS (tests/ops/ops_exports.c) writes the /metrics page and the EMF
lines of a process whose dependencies went through every state the kit
looks at; this script runs it, then:

  prometheus  deploy/prometheus/resil-rules.yml: `promtool check rules`,
              `promtool test rules deploy/prometheus/tests/*.yml`, every alert
              tested firing and silent, annotations naming the dependency and a
              runbook anchor that exists in docs/operations.md, and every metric,
              label and label value the expressions use exported for real.
  grafana     deploy/grafana/resil.json: every query (template variables
              replaced by concrete values) parsed by `promtool check rules`,
              its metrics, labels and label values exported for real, the
              variables' label_values() sources exported, the panels the kit
              promises present.
  cloudwatch  deploy/cloudwatch/resil-alarms.yml (CloudFormation): parses (with
              the intrinsic tags), every alarm's and dashboard widget's metric
              names, namespace and dimension set are what resil's EMF output
              declares in _aws.CloudWatchMetrics.

A metric or label renamed in src/export.c or src/emf.c, or a typo in deploy/,
fails a test case naming the expression and the name.
"""
import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

# ---------------------------------------------------------------- TAP ---

class Tap:
    def __init__(self):
        self.cases = []

    def case(self, ok, what, detail=()):
        self.cases.append((bool(ok), what, list(detail)))

    def check(self, what, problems):
        """One case: ok when problems (a list of strings) is empty."""
        self.case(not problems, what, problems)

    def finish(self):
        print(f"1..{len(self.cases)}")
        bad = 0
        for i, (ok, what, detail) in enumerate(self.cases, 1):
            print(f"{'ok' if ok else 'not ok'} {i} - {what}")
            if not ok:
                bad += 1
                for d in detail[:40]:
                    for line in str(d).splitlines():
                        print(f"#   {line}")
                if len(detail) > 40:
                    print(f"#   ... and {len(detail) - 40} more")
        return 1 if bad else 0


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kw)


def find_promtool():
    p = shutil.which("promtool")
    if not p:
        sys.exit("check_ops.py: promtool not found (Debian package prometheus; "
                 "scripts/lib/packages.sh installs it)")
    return p


def load_yaml_module():
    try:
        import yaml  # noqa: PLC0415
    except ImportError:
        sys.exit("check_ops.py: python3-yaml is missing (scripts/lib/packages.sh installs it)")
    return yaml

# ------------------------------------------------- what resil exports ---

class Exports:
    """The real output of ops_exports."""

    def __init__(self, exporter, tmp):
        self.prom_path = os.path.join(tmp, "metrics.txt")
        self.emf_path = os.path.join(tmp, "emf.jsonl")
        p = run([exporter, self.prom_path, self.emf_path])
        if p.returncode != 0:
            sys.exit(f"check_ops.py: {exporter} failed ({p.returncode}): {p.stderr.strip()}")
        # Prometheus: sample name -> {label: set(values)}
        self.series = {}
        with open(self.prom_path, encoding="utf-8") as f:
            for line in f:
                line = line.rstrip("\n")
                if not line or line.startswith("#"):
                    continue
                m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+\S+$", line)
                if not m:
                    sys.exit(f"check_ops.py: cannot parse exposition line: {line}")
                labels = self.series.setdefault(m.group(1), {})
                for lm in re.finditer(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"',
                                      m.group(3) or ""):
                    labels.setdefault(lm.group(1), set()).add(lm.group(2))
        # EMF: metric name -> unit, and the namespaces / dimension sets declared
        self.emf_metrics = {}
        self.emf_namespaces = set()
        self.emf_dimsets = set()
        self.emf_docs = 0
        with open(self.emf_path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                doc = json.loads(line)
                self.emf_docs += 1
                for d in doc["_aws"]["CloudWatchMetrics"]:
                    self.emf_namespaces.add(d["Namespace"])
                    for ds in d["Dimensions"]:
                        self.emf_dimsets.add(tuple(sorted(ds)))
                        for dim in ds:
                            if dim not in doc:
                                sys.exit(f"check_ops.py: EMF dimension {dim} has no value")
                    for m in d["Metrics"]:
                        if m["Name"] not in doc:
                            sys.exit(f"check_ops.py: EMF metric {m['Name']} has no value")
                        self.emf_metrics[m["Name"]] = m.get("Unit", "None")

    def all_label_values(self, label):
        out = set()
        for labels in self.series.values():
            out |= labels.get(label, set())
        return out

    def all_labels(self):
        out = set()
        for labels in self.series.values():
            out |= set(labels)
        return out

# ------------------------------------------------------------ PromQL ---

# Labels Prometheus itself adds to every scraped series (the target).
TARGET_LABELS = {"job", "instance"}
# Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = {"up"}
# Labels whose values are deployment data, not names the library chose.
FREE_VALUE_LABELS = {"job", "instance", "dependency", "service", "config_hash", "version",
                     "clock", "le", "__name__"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
            "or", "unless", "offset", "inf", "nan", "atan2",
            # aggregation operators (followed by by/without before their "(")
            "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
            "bottomk", "topk", "quantile"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}

TOKEN = re.compile(r"""
    (?P<ws>\s+) | (?P<comment>\#[^\n]*) |
    (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`) |
    (?P<num>0[xX][0-9a-fA-F]+|(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[a-zA-Z0-9]*) |
    (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*) |
    (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^=<>(){}\[\],@])
""", re.VERBOSE)


def tokenize(expr):
    toks, pos = [], 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot tokenize at {expr[pos:pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind in ("ws", "comment"):
            continue
        toks.append((kind, m.group()))
    return toks


def unquote(s):
    if s[0] == "`":
        return s[1:-1]
    return bytes(s[1:-1], "utf-8").decode("unicode_escape")


def selectors(expr):
    """[(metric, [(label, op, value)])] of every vector selector in expr."""
    toks = tokenize(expr)
    out, i = [], 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else None
        if kind == "ident" and text in GROUPING and nxt == "(":
            depth, i = 0, i + 1          # skip the label list
            while i < len(toks):
                depth += {"(": 1, ")": -1}.get(toks[i][1], 0)
                if depth == 0:
                    break
                i += 1
            i += 1
            continue
        if kind == "op" and text == "[":
            while i < len(toks) and toks[i][1] != "]":   # a range or subquery
                i += 1
            i += 1
            continue
        if (kind == "ident" and nxt != "(" and text.lower() not in KEYWORDS) or \
                (kind == "op" and text == "{"):
            name = text if kind == "ident" else None
            matchers = []
            if (kind == "op") or nxt == "{":
                i += 1 if kind == "op" else 2
                while i < len(toks) and toks[i][1] != "}":
                    if toks[i][1] == ",":
                        i += 1
                        continue
                    lbl, op, val = toks[i][1], toks[i + 1][1], toks[i + 2]
                    if val[0] != "str":
                        raise ValueError(f"matcher {lbl}{op} without a string value")
                    matchers.append((lbl, op, unquote(val[1])))
                    i += 3
            for lbl, op, val in matchers:
                if lbl == "__name__" and op == "=":
                    name = val
            out.append((name, matchers))
        i += 1
    return out


def alternatives(regex):
    """The literal alternatives of a simple regex like 'a|b_c', else None."""
    parts = regex.split("|")
    if all(re.fullmatch(r"[A-Za-z0-9_:.+-]*", p) and not re.search(r"[.+]", p) for p in parts):
        return parts
    return None


def check_expr(expr, exports, recorded, where):
    """Problems with the names expr uses; recorded: {name: labels} of recording rules."""
    try:
        sels = selectors(expr)
    except (ValueError, IndexError) as e:
        return [f"{where}: cannot read the expression: {e}"]
    problems = []
    for name, matchers in sels:
        if name is None:
            problems.append(f"{where}: a selector without a metric name")
            continue
        if name in PROMETHEUS_SERIES:
            labels = {lbl: None for lbl in TARGET_LABELS}
        elif name in exports.series:
            labels = dict(exports.series[name])
        elif name in recorded:
            labels = {lbl: None for lbl in recorded[name]}
        else:
            problems.append(f"{where}: metric {name} is not exported by resil "
                            f"(nor recorded by the rules)")
            continue
        for lbl, op, val in matchers:
            if lbl == "__name__" or lbl in TARGET_LABELS:
                continue
            if lbl not in labels:
                problems.append(f"{where}: {name} has no label {lbl} "
                                f"(it has: {', '.join(sorted(labels)) or 'none'})")
                continue
            if lbl in FREE_VALUE_LABELS:
                continue
            known = labels[lbl] if labels[lbl] is not None else exports.all_label_values(lbl)
            vals = [val] if op in ("=", "!=") else alternatives(val)
            if vals is None:
                continue
            for v in vals:
                if v not in known:
                    problems.append(f"{where}: {name}{{{lbl}{op}\"{val}\"}}: no exported "
                                    f"series has {lbl}=\"{v}\" (exported: "
                                    f"{', '.join(sorted(known))})")
    return problems


def grouping_labels(expr):
    """Labels of the outermost `by (...)` of a recording rule, for its output."""
    m = re.match(r"\s*(?:sum|max|min|avg|count)\s+by\s*\(([^)]*)\)", expr)
    if m:
        return {x.strip() for x in m.group(1).split(",") if x.strip()}
    found = set()
    for m in re.finditer(r"\bby\s*\(([^)]*)\)", expr):
        found |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    return found - {"le"} if "histogram_quantile" in expr else found

# --------------------------------------------------------- prometheus ---

def anchors(md_path):
    """GitHub-style anchors of the headings of a markdown file."""
    out = set()
    with open(md_path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"#{1,6}\s+(.*)", line)
            if m:
                a = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
                out.add(a)
    return out


def check_prometheus(tap, root, exports, tmp):
    yaml = load_yaml_module()
    promtool = find_promtool()
    rules_path = os.path.join(root, "deploy/prometheus/resil-rules.yml")
    tests = sorted(glob.glob(os.path.join(root, "deploy/prometheus/tests/*.yml")))

    p = run([promtool, "check", "rules", rules_path])
    tap.case(p.returncode == 0, "promtool check rules deploy/prometheus/resil-rules.yml",
             (p.stdout + p.stderr).splitlines())
    tap.case(bool(tests), "deploy/prometheus/tests/ has unit tests", ["no *.yml there"])
    if tests:
        # promtool resolves rule_files relative to each test file
        p = run([promtool, "test", "rules"] + tests)
        tap.case(p.returncode == 0, f"promtool test rules ({len(tests)} files)",
                 (p.stdout + p.stderr).splitlines())

    with open(rules_path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    rules = [r for g in doc["groups"] for r in g["rules"]]
    alerts = [r for r in rules if "alert" in r]
    recorded = {r["record"]: grouping_labels(r["expr"]) for r in rules if "record" in r}

    problems = []
    for r in rules:
        problems += check_expr(r["expr"], exports, recorded, r.get("alert") or r.get("record"))
    tap.check("every metric, label and label value in the rules is exported by resil", problems)

    # The alerts the kit promises.
    wanted = {
        "breaker open for minutes": lambda e: "resil_breaker_state" in e and "open" in e,
        "breaker flapping": lambda e: "resil_breaker_transitions_total" in e,
        "saturation": lambda e: "resil_saturation_ratio" in e,
        "pool acquire p99": lambda e: "pool_acquire_duration_seconds" in e,
        "rejections share": lambda e: "rejections" in e and "/" in e,
        "no resil_info": lambda e: "absent(resil_info)" in e.replace(" ", ""),
        "target down": lambda e: re.search(r"\bup\b", e) is not None,
        "config_hash drift": lambda e: "config_hash" in e,
    }
    missing = [w for w, f in wanted.items() if not any(f(a["expr"]) for a in alerts)]
    tap.check("the rules have an alert for each promised condition", missing)
    rec_wanted = ["success", "call_duration_seconds:p50", "call_duration_seconds:p99"]
    tap.check("recording rules: success ratio and latency quantiles per dependency",
              [w for w in rec_wanted if not any(w in n for n in recorded)])

    # Which labels each alert's firing instances carry (from the promtool tests).
    fired, silent, out_labels = set(), set(), {}
    for t in tests:
        with open(t, encoding="utf-8") as f:
            td = yaml.safe_load(f)
        for case in td.get("tests", []):
            for at in case.get("alert_rule_test", []):
                (fired if at.get("exp_alerts") else silent).add(at["alertname"])
                for ea in at.get("exp_alerts") or []:
                    out_labels.setdefault(at["alertname"], set()).update(
                        ea.get("exp_labels", {}))

    # Annotations: summary and description naming the dependency (or, for
    # alerts about a whole task or service, the service), a severity, a
    # runbook anchor that exists.
    have = anchors(os.path.join(root, "docs/operations.md"))
    problems = []
    for a in alerts:
        ann, name = a.get("annotations", {}), a["alert"]
        for k in ("summary", "description", "runbook_url"):
            if not ann.get(k):
                problems.append(f"{name}: no {k} annotation")
        who = "dependency" if "dependency" in out_labels.get(name, set()) else "service"
        for k in ("summary", "description"):
            if f"$labels.{who}" not in ann.get(k, ""):
                problems.append(f"{name}: {k} does not name the {who} ($labels.{who})")
        if "severity" not in a.get("labels", {}):
            problems.append(f"{name}: no severity label")
        m = re.fullmatch(r"docs/operations\.md#([\w-]+)", ann.get("runbook_url", ""))
        if not m:
            problems.append(f"{name}: runbook_url {ann.get('runbook_url')!r} is not "
                            f"docs/operations.md#anchor")
        elif m.group(1) not in have:
            problems.append(f"{name}: docs/operations.md has no heading for #{m.group(1)}")
    tap.check("each alert: summary and description naming the dependency (or service), "
              "severity, runbook anchor in docs/operations.md", problems)

    # Each alert is tested firing and silent.
    names = {a["alert"] for a in alerts}
    tap.check("every alert has a promtool test where it fires",
              sorted(names - fired))
    tap.check("every alert has a promtool test where it stays silent",
              sorted(names - silent))
    tap.check("the promtool tests name only alerts that exist",
              sorted((fired | silent) - names))

# ------------------------------------------------------------ grafana ---

GRAFANA_VALUES = {"service": "checkout", "dependency": "orders-db",
                  "__rate_interval": "5m", "__interval": "1m", "__range": "1h",
                  "__interval_ms": "60000", "__range_s": "3600"}


def substitute(expr, variables):
    def rep(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in variables:
            raise KeyError(name)
        return variables[name]
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", rep, expr)


def panels_of(dash):
    out = []
    stack = list(dash.get("panels", []))
    while stack:
        p = stack.pop(0)
        out.append(p)
        stack[0:0] = p.get("panels", [])
    return out


def check_grafana(tap, root, exports, tmp):
    promtool = find_promtool()
    path = os.path.join(root, "deploy/grafana/resil.json")
    try:
        with open(path, encoding="utf-8") as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        tap.case(False, "deploy/grafana/resil.json is JSON", [str(e)])
        return
    tap.case(True, "deploy/grafana/resil.json is JSON")

    templ = dash.get("templating", {}).get("list", [])
    variables = dict(GRAFANA_VALUES)
    problems, var_exprs = [], []
    tnames = {t.get("name") for t in templ}
    for want in ("service", "dependency"):
        if want not in tnames:
            problems.append(f"no template variable {want}")
    for t in templ:
        if t.get("type") != "query":
            continue
        q = t.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"\s*query_result\((.*)\)\s*", q or "", re.S)
        if m:     # checked with the panels' queries below
            try:
                var_exprs.append((f"variable {t.get('name')}", substitute(m.group(1), variables)))
            except KeyError as e:
                problems.append(f"variable {t.get('name')}: unknown variable ${e.args[0]}")
            continue
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", q or "")
        if not m:
            problems.append(f"variable {t.get('name')}: query {q!r} is neither "
                            f"label_values(SELECTOR, LABEL) nor query_result(EXPR)")
            continue
        sel, label = m.group(1), m.group(2)
        try:
            sel = substitute(sel, variables)
        except KeyError as e:
            problems.append(f"variable {t.get('name')}: unknown variable ${e.args[0]}")
            continue
        problems += check_expr(sel, exports, {}, f"variable {t.get('name')}")
        for name, _ in selectors(sel):
            if name in exports.series and label not in exports.series[name]:
                problems.append(f"variable {t.get('name')}: {name} has no label {label}")
    tap.check("template variables come from label_values() / query_result() of exported "
              "series and labels",
              problems)

    exprs, problems = [], []
    for p in panels_of(dash):
        for t in p.get("targets", []):
            if "expr" not in t:
                continue
            where = f"panel {p.get('title')!r} query {t.get('refId')}"
            try:
                exprs.append((where, substitute(t["expr"], variables), p))
            except KeyError as e:
                problems.append(f"{where}: unknown variable ${e.args[0]}")
    tap.check("every query's template variables are defined", problems)
    exprs += [(where, e, {}) for where, e in var_exprs]
    tap.case(len(exprs) >= 10, f"the dashboard has queries ({len(exprs)})")

    # promtool parses each query: as a recording rule of a throwaway file.
    rules = os.path.join(tmp, "dashboard-rules.yml")
    with open(rules, "w", encoding="utf-8") as f:
        f.write("groups:\n  - name: dashboard\n    rules:\n")
        for n, (where, e, _) in enumerate(exprs):
            f.write(f"      # {where}\n      - record: dashboard:query_{n}\n        expr: "
                    + json.dumps(e) + "\n")
    pr = run([promtool, "check", "rules", rules])
    detail = (pr.stdout + pr.stderr).splitlines()
    for m in re.finditer(r"rule (\d+)", pr.stdout + pr.stderr):
        k = int(m.group(1)) - 1
        if 0 <= k < len(exprs):
            detail.append(f"rule {k + 1} is {exprs[k][0]}: {exprs[k][1]}")
    tap.case(pr.returncode == 0, "promtool parses every dashboard query (as recording rules)",
             detail)

    problems = []
    for where, e, _ in exprs:
        problems += check_expr(e, exports, {}, where)
    tap.check("every metric, label and label value on the dashboard is exported by resil",
              problems)

    # The panels the kit promises, each found by the metrics its queries use.
    allq = " ".join(e for _, e, _ in exprs)
    promised = {
        "breaker state": ["resil_breaker_state"],
        "calls by outcome": ["resil_calls_total"],
        "rejections by reason": ["resil_rejections_total"],
        "in-flight against limit": ["resil_in_flight", "resil_concurrency_limit"],
        "pool in-use / idle / waiters": ["resil_pool_connections", "resil_pool_waiters"],
        "latency p50/p99": ["resil_call_duration_seconds_bucket"],
        "retries and budget rejections": ["resil_retries_total", "retry_budget"],
        "probes": ["resil_probes_total"],
    }
    tap.check("the dashboard has every promised panel",
              [f"{k}: no query uses {w}" for k, ws in promised.items() for w in ws
               if w not in allq])
    problems = []
    for where, e, p in exprs:
        if re.search(r"resil_(?!info)\w+", e) and "resil_info" not in e:
            problems.append(f"{where}: not filtered by $service (join resil_info{{service=...}})")
        if "dependency" not in e and re.search(r"resil_(?!info|emf|event_log)\w+", e):
            problems.append(f"{where}: not filtered by $dependency")
    tap.check("every per-dependency query is filtered by $service and $dependency", problems)

# --------------------------------------------------------- cloudwatch ---

def cfn_loader(yaml):
    class Loader(yaml.SafeLoader):
        pass

    def construct(loader, suffix, node):
        if isinstance(node, yaml.ScalarNode):
            val = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            val = loader.construct_sequence(node, deep=True)
        else:
            val = loader.construct_mapping(node, deep=True)
        if suffix == "Ref":
            return {"Ref": val}
        if suffix == "GetAtt" and isinstance(val, str):
            val = val.split(".", 1)
        return {f"Fn::{suffix}": val}

    Loader.add_multi_constructor("!", construct)
    return Loader


def resolve(node, params):
    """Resolve Ref / Fn::Sub / Fn::Join with the parameters' defaults."""
    if isinstance(node, dict):
        if set(node) == {"Ref"} and node["Ref"] in params:
            return params[node["Ref"]]
        if set(node) == {"Fn::Sub"}:
            v = node["Fn::Sub"]
            tmpl, extra = (v, {}) if isinstance(v, str) else (v[0], resolve(v[1], params))
            env = dict(params, **extra)
            env.setdefault("AWS::Region", "us-east-1")
            env.setdefault("AWS::StackName", "resil-ops")
            env.setdefault("AWS::AccountId", "123456789012")

            def rep(m):
                if m.group(1).startswith("!"):
                    return "${" + m.group(1)[1:] + "}"
                if m.group(1) not in env:
                    raise KeyError(m.group(1))
                return str(env[m.group(1)])
            return re.sub(r"\$\{([^}]*)\}", rep, tmpl)
        if set(node) == {"Fn::Join"}:
            sep, items = node["Fn::Join"]
            return sep.join(str(resolve(x, params)) for x in items)
        return {k: resolve(v, params) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(x, params) for x in node]
    return node


def search_terms(expr):
    """(namespace, dims, [metric names]) of a SEARCH('{ns,Dim,...} ...') expression."""
    m = re.search(r"SEARCH\(\s*'\{([^}]*)\}([^']*)'", expr)
    if not m:
        return None
    schema = [x.strip().strip('"') for x in m.group(1).split(",")]
    names = re.findall(r'MetricName\s*=\s*\\?"?([A-Za-z0-9_]+)', m.group(2))
    names += [n for grp in re.findall(r'MetricName\s*=\s*\(([^)]*)\)', m.group(2))
              for n in re.findall(r'[A-Za-z0-9_]+', grp) if n not in ("OR", "AND")]
    return schema[0], tuple(sorted(schema[1:])), names


def check_cloudwatch(tap, root, exports, tmp):
    yaml = load_yaml_module()
    paths = sorted(glob.glob(os.path.join(root, "deploy/cloudwatch/*.yml")) +
                   glob.glob(os.path.join(root, "deploy/cloudwatch/*.yaml")))
    tap.case(bool(paths), "deploy/cloudwatch/ has a CloudFormation template", ["none"])
    tap.case(exports.emf_docs > 0 and "Latency" in exports.emf_metrics and
             "PoolAcquireLatency" in exports.emf_metrics,
             f"resil emitted EMF ({exports.emf_docs} documents, "
             f"{len(exports.emf_metrics)} metrics, incl. the distributions)",
             [f"metrics: {sorted(exports.emf_metrics)}"])
    for path in paths:
        rel = os.path.relpath(path, root)
        try:
            with open(path, encoding="utf-8") as f:
                doc = yaml.load(f, Loader=cfn_loader(yaml))  # noqa: S506 (a SafeLoader)
        except yaml.YAMLError as e:
            tap.case(False, f"{rel} parses as CloudFormation YAML", [str(e)])
            continue
        tap.case(isinstance(doc, dict) and "Resources" in doc,
                 f"{rel} parses as CloudFormation YAML", ["no Resources"])
        if not isinstance(doc, dict) or "Resources" not in doc:
            continue
        params = {k: v.get("Default") for k, v in (doc.get("Parameters") or {}).items()}
        problems = [f"parameter {k} has no Default (the test needs one)"
                    for k, v in params.items() if v is None]
        params = {k: ("" if v is None else str(v)) for k, v in params.items()}
        ns_param = [k for k in params if k.lower().endswith("namespace")]
        for k in ns_param:
            if params[k] not in exports.emf_namespaces:
                problems.append(f"parameter {k} defaults to {params[k]!r}; resil's default "
                                f"EMF namespace is {sorted(exports.emf_namespaces)}")
        alarms = dashboards = 0
        used = set()

        def check_metric(where, ns, name, dims):
            used.add(name)
            if name not in exports.emf_metrics:
                problems.append(f"{where}: metric {name} is not in resil's EMF output")
            if ns not in exports.emf_namespaces:
                problems.append(f"{where}: namespace {ns!r} is not resil's EMF namespace "
                                f"{sorted(exports.emf_namespaces)}")
            if tuple(sorted(dims)) not in exports.emf_dimsets:
                problems.append(f"{where}: dimensions {sorted(dims)} are not a dimension set "
                                f"resil emits {sorted(exports.emf_dimsets)} (CloudWatch "
                                f"matches the exact set)")

        try:
            res = resolve(doc["Resources"], params)
        except KeyError as e:
            tap.case(False, f"{rel}: every ${{...}} of !Sub is a parameter", [str(e)])
            continue
        for rname, r in res.items():
            props = r.get("Properties", {})
            if r.get("Type") == "AWS::CloudWatch::Alarm":
                alarms += 1
                if "MetricName" in props:
                    check_metric(rname, props.get("Namespace"), props["MetricName"],
                                 [d["Name"] for d in props.get("Dimensions", [])])
                    unit = exports.emf_metrics.get(props["MetricName"])
                    if unit == "Percent" and not 1 < float(props.get("Threshold", 0)) <= 100:
                        problems.append(f"{rname}: {props['MetricName']} is in percent "
                                        f"(0..100), threshold {props.get('Threshold')}")
                for q in props.get("Metrics", []):
                    ms = q.get("MetricStat")
                    if ms:
                        m = ms["Metric"]
                        check_metric(f"{rname}/{q.get('Id')}", m.get("Namespace"),
                                     m["MetricName"], [d["Name"] for d in m.get("Dimensions", [])])
                if not props.get("AlarmDescription") or "operations.md#" not in \
                        props.get("AlarmDescription", ""):
                    problems.append(f"{rname}: AlarmDescription without a runbook link "
                                    f"(docs/operations.md#...)")
            if r.get("Type") == "AWS::CloudWatch::Dashboard":
                dashboards += 1
                try:
                    body = json.loads(props["DashboardBody"])
                except (ValueError, TypeError) as e:
                    problems.append(f"{rname}: DashboardBody is not JSON: {e}")
                    continue
                for w in body.get("widgets", []):
                    title = w.get("properties", {}).get("title", "?")
                    prev = None
                    for row in w.get("properties", {}).get("metrics", []):
                        if isinstance(row, list) and row and isinstance(row[0], dict):
                            row = row[:1]
                        if isinstance(row, list) and row and isinstance(row[0], str):
                            items = [x for x in row if not isinstance(x, dict)]
                            if prev and items[0] == ".":
                                items = [p if x == "." else x for x, p in
                                         zip(items, prev + [None] * len(items))]
                            prev = items
                            dims = items[2::2]
                            check_metric(f"{rname}/{title}", items[0], items[1], dims)
                        elif isinstance(row, list) and row and isinstance(row[0], dict):
                            e = row[0].get("expression", "")
                            st = search_terms(e)
                            if st:
                                ns, dims, names = st
                                if not names:
                                    problems.append(f"{rname}/{title}: SEARCH without MetricName")
                                for n in names:
                                    check_metric(f"{rname}/{title}", ns, n, dims)
        tap.case(alarms >= 3, f"{rel}: {alarms} alarms", ["want at least 3"])
        tap.case(dashboards >= 1, f"{rel}: {dashboards} dashboard(s)", ["want one"])
        want = {"BreakerOpened", "Saturation", "Rejections"}
        problems += [f"no alarm or widget uses {w}" for w in sorted(want - used)]
        tap.check(f"{rel}: metric names, namespace and dimensions are what resil's EMF "
                  f"declares", problems)

# -------------------------------------------------------------- main ---

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=["prometheus", "grafana", "cloudwatch"])
    ap.add_argument("--exporter", required=True)
    ap.add_argument("--root", required=True)
    a = ap.parse_args()
    tap = Tap()
    with tempfile.TemporaryDirectory(prefix="resil-ops-") as tmp:
        exports = Exports(a.exporter, tmp)
        {"prometheus": check_prometheus, "grafana": check_grafana,
         "cloudwatch": check_cloudwatch}[a.part](tap, a.root, exports, tmp)
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
