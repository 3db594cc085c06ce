# peakpilot: the two commands a new user runs are `make demo` and `make test`.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
OUT     ?= runs/demo

.PHONY: setup runtime-deps system-deps demo test bench configmap manifests clean

setup: runtime-deps $(VENV)/.installed

# The one shared library a pip wheel does not bring: LightGBM's OpenMP runtime.
runtime-deps:
	@if ldconfig -p 2>/dev/null | grep -q 'libgomp.so.1 '; then :; else \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends libgomp1; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	# pip, not uv/poetry: on these machines torch==2.13.0 comes from a local CPU wheel that only pip sees.
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Debian packages the tests use: a real Prometheus (with promtool for backfills), a real browser, and a
# real PostgreSQL for the store (the tests start their own throwaway clusters on loopback ports).
system-deps:
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v chromium >/dev/null \
		&& ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "system packages present"; \
	else \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends prometheus chromium postgresql; \
	fi

# The main job on the embedded default: replay the sample trace in data/ through the controller on the
# simulated cluster, against reactive, static and oracle strategies; the timeline goes to a store.
demo: setup
	@mkdir -p $(OUT)
	$(VENV)/bin/peakpilot replay --store sqlite:///$(OUT)/peakpilot.db
	$(VENV)/bin/peakpilot forecast --horizon 30

test: setup system-deps
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/forecast_targets.py > bench/forecast_targets.json
	$(PY) bench/replay_targets.py > bench/replay_targets.json

# The policy ConfigMap of deploy/ is the default policy with the cluster's capacity and Prometheus.
configmap:
	$(PY) deploy/render_policy_configmap.py > deploy/policy-configmap.yaml

# Every generated manifest: the policy ConfigMap, the alerting rules as a PrometheusRule, the Grafana
# dashboard as a ConfigMap, and the RBAC the deployed policy needs.
manifests: configmap
	$(PY) deploy/render_prometheus_rule.py > deploy/monitoring/prometheus-rule.yaml
	$(PY) deploy/render_grafana_dashboard.py > deploy/monitoring/grafana-dashboard.yaml
	$(PY) deploy/render_rbac.py > deploy/controller-rbac.yaml

clean:
	rm -rf $(VENV) runs .pytest_cache
