# PySandbox: the front door.
#
#   make test-unit  the tests that need no root, jail or service (tests/unit: seconds)
#   make test     venv + jail site-packages, then every test (the Docker tests build the image)
#   make test-vm  only the VM tier (tests/vm): cgroup v2, two hosts; a Debian 12 VM (qemu, .ci/vm/build-disk)
#   make image    build the API image (IMAGE=pysandbox:latest) from Dockerfile.api;
#                 JAIL_PACKAGES="pkg==1.0 ..." adds pinned packages to the jail's site-packages
#   make image-plot     the image with matplotlib in the jail (PLOT_IMAGE=$(IMAGE)-matplotlib)
#   make run      build the image (cached) and serve it on http://localhost:8080
#                 (one container: embedded redis, PYSANDBOX_WORKERS=2 workers, gunicorn)
#   make image-worker   the worker image (WORKER_IMAGE) from Dockerfile.worker, on top of IMAGE
#   make compose-up     docker-compose up -d --build $(COMPOSE_ARGS), e.g. COMPOSE_ARGS='--scale worker=4'
#   make venv     .venv with the service and test dependencies (editable install)
#   make jail-site  /opt/pysandbox/jail-site: numpy, pandas... for the jail only (jail/requirements.txt)
#   make -s print-DOCKER_RUN_FLAGS   print a variable exactly (for scripts and tests)

SHELL := /bin/bash
.DEFAULT_GOAL := help

IMAGE ?= pysandbox:latest
# Extra packages for the jail only (pip requirement specifiers, pinned by whoever builds).
JAIL_PACKAGES ?=
# The plot variant: matplotlib and its dependencies, pinned (numpy and dateutil come from
# jail/requirements.txt).
PLOT_IMAGE ?= $(IMAGE)-matplotlib
PLOT_PACKAGES ?= matplotlib==3.10.7 contourpy==1.3.3 cycler==0.12.1 fonttools==4.68.0 \
	kiwisolver==1.5.1 packaging==26.4 pillow==13.0.0 pyparsing==3.3.3
WORKER_IMAGE ?= pysandbox-worker:latest
COMPOSE_ARGS ?=
# What nsjail needs inside a container (see docs/security.md): namespaces need seccomp off;
# CAP_SYS_ADMIN lets the entrypoint hand the container's own cgroups to the jail by a remount
# (without it, the entrypoint gets them through a user namespace where the kernel allows it)
# and lets nsjail create user namespaces where unprivileged ones are restricted;
# AppArmor's docker-default profile forbids the jail's mounts (ignored where AppArmor is off).
DOCKER_RUN_FLAGS = --cap-add SYS_ADMIN --security-opt seccomp=unconfined --security-opt apparmor=unconfined

PYTHON ?= /usr/bin/python3
VENV := .venv
# The jail mounts this as uid 65534, so it lives where every parent dir is searchable
# (not in a checkout that may sit under a 0700 home); jail/paths.py's default.
JAIL_SITE ?= /opt/pysandbox/jail-site
PYTEST_ARGS ?=

# A TLS-intercepting proxy's CA certificates, when this host has any: given to the build
# stage of the image only (pip needs them to reach PyPI), never to the final image.
EXTRA_CA_FILES := $(wildcard /usr/local/share/ca-certificates/*.crt)
DOCKER_BUILD_ARGS := $(if $(EXTRA_CA_FILES),--build-arg EXTRA_CA_CERTS="$$(cat $(EXTRA_CA_FILES))")
DOCKER_BUILD_ARGS += $(if $(strip $(JAIL_PACKAGES)),--build-arg JAIL_PACKAGES="$(strip $(JAIL_PACKAGES))")

.PHONY: help venv jail-site image image-plot image-worker compose-up run test-unit test test-vm clean print-%

help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))

venv: $(VENV)/.installed
jail-site: $(JAIL_SITE)/.installed

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml client/pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/pip install --disable-pip-version-check -e '.[test]' -e ./client
	touch $@

# Built aside and swapped in, so that an interrupted install never looks complete. The
# .pyc files pip compiles stay (the jail mounts this read-only); test suites go.
$(JAIL_SITE)/.installed: jail/requirements.txt | $(VENV)/bin/python
	rm -rf $(JAIL_SITE).new
	mkdir -p -m 755 $(dir $(JAIL_SITE))
	$(VENV)/bin/pip install --disable-pip-version-check --target $(JAIL_SITE).new -r jail/requirements.txt
	rm -rf $(JAIL_SITE).new/pandas/tests $(JAIL_SITE).new/bin
	find $(JAIL_SITE).new/numpy -depth -type d -name tests -exec rm -rf {} +
	chmod -R a+rX $(JAIL_SITE).new
	touch $(JAIL_SITE).new/.installed
	rm -rf $(JAIL_SITE).old
	if [ -e $(JAIL_SITE) ]; then mv $(JAIL_SITE) $(JAIL_SITE).old; fi
	mv $(JAIL_SITE).new $(JAIL_SITE)
	rm -rf $(JAIL_SITE).old

image:
	docker build -f Dockerfile.api -t $(IMAGE) $(DOCKER_BUILD_ARGS) .

image-plot:
	$(MAKE) --no-print-directory image IMAGE=$(PLOT_IMAGE) JAIL_PACKAGES="$(PLOT_PACKAGES)"

# Dockerfile.worker adds only a CMD to IMAGE (see its header).
image-worker: image
	docker build -f Dockerfile.worker --build-arg PYSANDBOX_IMAGE=$(IMAGE) -t $(WORKER_IMAGE) .

# docker-compose.yml builds with the same proxy CA certificates as `make image`.
compose-up:
	$(if $(EXTRA_CA_FILES),PYSANDBOX_EXTRA_CA_CERTS="$$(cat $(EXTRA_CA_FILES))") \
	PYSANDBOX_IMAGE=$(IMAGE) PYSANDBOX_WORKER_IMAGE=$(WORKER_IMAGE) docker-compose up -d --build $(COMPOSE_ARGS)

# Always (re)builds first: the build cache makes that quick, and a stale image is never served.
run: image
	docker run --rm -p 8080:8080 $(DOCKER_RUN_FLAGS) $(IMAGE)

test-unit: venv
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

test: venv jail-site
	PYSANDBOX_JAIL_SITE=$(JAIL_SITE) $(VENV)/bin/pytest tests/ $(PYTEST_ARGS)

test-vm: venv
	$(VENV)/bin/pytest tests/vm $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(JAIL_SITE) $(JAIL_SITE).new $(JAIL_SITE).old .pytest_cache

print-%:
	$(info $($*))
	@:
