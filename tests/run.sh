#!/usr/bin/env bash
# Runs Broadside's whole test suite. Installs what the tests need when it is
# missing (Postfix for smtp-sink, the relay and the DSN tests, python3-dkim as the
# independent DKIM verifier, Chromium and chromedriver for the browser test,
# Java and Maven for Apache Kafka and Apache Cassandra, PostgreSQL as the peer
# of the import and segment benches (every bench runs at smoke size), cargo-nextest,
# cargo-deny, a Python venv with Helm's SDK for the chart check), checks the dependencies' licenses and
# sources (and advisories when online), builds the binaries the black-box and
# cluster tests run, starts Apache Kafka and Apache Cassandra once
# (deploy/local/engines.sh; jars cached in ~/.cache/broadside/engines), then
# runs every test in the workspace and stops the engines it started.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -x /usr/sbin/smtp-sink ]; then
  echo "tests/run.sh: installing postfix (for smtp-sink)"
  echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
fi
# dkimpy (Debian's python3-dkim, with PyNaCl for Ed25519) verifies our DKIM signatures.
if ! /usr/bin/python3 -c "import dkim, nacl" 2>/dev/null; then
  echo "tests/run.sh: installing python3-dkim and python3-nacl (the independent DKIM verifier)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-dkim python3-nacl >/dev/null
fi
# Debian's headless Chromium and its chromedriver drive the unsubscribe page test.
if [ ! -x /usr/bin/chromedriver ] || [ ! -x /usr/bin/chromium ]; then
  echo "tests/run.sh: installing chromium and chromium-driver (the browser test)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
# PostgreSQL (the peer of bench/import.sh and bench/segment.sh) and curl
# (bench/send.sh reads /metrics): every bench runs at smoke size in the tests.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v curl >/dev/null; then
  echo "tests/run.sh: installing postgresql and curl (the benches' peer and probe)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql curl >/dev/null
fi
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "tests/run.sh: installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

if ! cargo deny --version >/dev/null 2>&1; then
  echo "tests/run.sh: installing cargo-deny"
  cargo install cargo-deny --locked
fi

# Supply chain: licenses, bans and sources always; RustSec advisories when the
# database can be fetched (it lives on GitHub; an offline machine cannot).
cargo deny check licenses bans sources
if ! advisories=$(cargo deny check advisories 2>&1); then
  if grep -q "failed to fetch advisory database" <<<"$advisories"; then
    echo "tests/run.sh: warning: advisories not checked (cannot reach the RustSec database)"
  else
    echo "$advisories"
    exit 1
  fi
fi

# A clean clone builds once: incremental caches would only cost disk.
export CARGO_INCREMENTAL=0
cargo build --workspace --all-targets
cargo build --release -p broadside   # the cluster tests run the release binary

# The Helm chart: rendered by Helm's own SDK (PyPI helm-python-sdk), each
# manifest checked against the Kubernetes schemas (kubernetes-validate), and
# the chart's policies asserted (tests/helm/check_chart.py). No cluster needed.
HELM_VENV="$HOME/.cache/broadside/helm-venv"
if ! "$HELM_VENV/bin/python" -c "import helm_python, kubernetes_validate" 2>/dev/null; then
  echo "tests/run.sh: installing helm-python-sdk and kubernetes-validate into $HELM_VENV"
  if ! python3 -m venv "$HELM_VENV" 2>/dev/null; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$HELM_VENV" && python3 -m venv "$HELM_VENV"
  fi
  "$HELM_VENV/bin/pip" install -q helm-python-sdk==0.2.2 kubernetes-validate==1.37.0
fi
BROADSIDE_BIN=target/release/broadside "$HELM_VENV/bin/python" tests/helm/check_chart.py

# The real engines: Apache Kafka (KRaft) and Apache Cassandra 5.0, once per
# run, shared by the store suite, the Kafka bus tests and the cluster tests
# (which stop and start them in their fault scenarios, one test at a time).
# Stopped at the end only if this run started them.
ENGINES=deploy/local/engines.sh
started_engines=()
stop_engines() { for name in "${started_engines[@]}"; do "$ENGINES" "$name" down || true; done; }
trap stop_engines EXIT
for name in kafka cql; do
  "$ENGINES" "$name" status >/dev/null 2>&1 || started_engines+=("$name")
  "$ENGINES" "$name" up
done
export BROADSIDE_TEST_KAFKA_URI="${BROADSIDE_TEST_KAFKA_URI:-$("$ENGINES" kafka url)}"
if [ -n "${BROADSIDE_TEST_SCYLLA_URI:-}" ]; then
  echo "tests/run.sh: the CQL store suite runs against the ScyllaDB node $BROADSIDE_TEST_SCYLLA_URI"
else
  BROADSIDE_TEST_SCYLLA_URI="$("$ENGINES" cql url | sed 's|/broadside?|/broadside_test?|')"
  export BROADSIDE_TEST_SCYLLA_URI
  echo "tests/run.sh: the CQL store suite runs against the local Apache Cassandra ($BROADSIDE_TEST_SCYLLA_URI)"
fi
cargo nextest run --workspace --no-fail-fast "$@"
