# Two commands for a fresh Debian machine (as root): `make test` and `make demo`.
# Both install what they need: apt packages, a virtualenv in .venv, the project and its extras.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := qemu-utils libvirt-clients libxml2-utils sqlite3 genisoimage openssh-server openssh-client
# packages: rpmbuild (rpm), dpkg-deb (dpkg-dev), their linters, systemd-analyze
APT_PACKAGES += rpm dpkg-dev lintian rpmlint systemd
# checkpoint archives (SP_COMPRESSION), the HA log volume's filesystem and loop devices
APT_PACKAGES += lz4 zstd pigz xz-utils bzip2 e2fsprogs mount
STAMP := $(VENV)/.installed

.PHONY: test demo lint system-packages venv bench clean packages

system-packages:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing apt packages:$$missing (run as root)"; exit 1; fi; \
	  echo "installing apt packages:$$missing"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: system-packages $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .

test: venv lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

demo: venv
	$(PY) -m onestorpool.demo

# dist/onestorpool_<version>_<arch>.deb and dist/onestorpool-<version>-1.<arch>.rpm
# (packaging/build.py says what goes in; `make test` builds and checks them too)
packages: venv
	$(PY) packaging/build.py --out dist

bench: venv
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info
