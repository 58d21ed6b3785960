#!/usr/bin/env python3
"""Write the Prometheus Operator's PrometheusRule from deploy/prometheus/alerts.yml.

The alert rules live in one place, alerts.yml, which promtool checks and unit
tests. The PrometheusRule in deploy/kubernetes/prometheus-operator/ is that
file's text indented under ``spec:`` (comments kept), so the two cannot drift:
tests/test_kubernetes.py fails when the committed object differs from what
this script writes. After changing alerts.yml run:

    python3 scripts/render_prometheusrule.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
OUTPUT = ROOT / "deploy" / "kubernetes" / "prometheus-operator" / "prometheusrule.yaml"

HEADER = """\
# Generated from deploy/prometheus/alerts.yml by scripts/render_prometheusrule.py:
# edit alerts.yml and run the script, not this file.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: pgtls-proxy
  labels:
    app.kubernetes.io/name: pgtls-proxy
spec:
"""


def render(alerts_text: str) -> str:
    """The PrometheusRule: HEADER, then the rule file's lines indented by two spaces.

    The rule file's own leading comment (how to load it with rule_files) does
    not apply here and is left out; comments inside the rules are kept.
    """
    lines = alerts_text.splitlines()
    start = 0
    while start < len(lines) and (not lines[start].strip() or lines[start].startswith("#")):
        start += 1
    body = [f"  {line}" if line.strip() else "" for line in lines[start:]]
    return HEADER + "\n".join(body).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    args = p.parse_args(argv)
    text = render(ALERTS.read_text(encoding="utf-8"))
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
