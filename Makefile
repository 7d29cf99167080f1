# The two commands: `make demo` (the whole system on embedded services and a simulated fleet)
# and `make test` (installs everything, then runs the suite).
.PHONY: deps test demo up bench

deps:
	bash scripts/install-deps.sh

test: deps
	bash scripts/run-tests.sh

demo: deps
	python3 -m worker.cli demo

up: deps
	python3 -m worker.cli up

bench: deps
	python3 -m pytest tests/bench -p no:cacheprovider -s
