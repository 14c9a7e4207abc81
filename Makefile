# Shortcuts for developers who have make; the README's commands need only bash.
.PHONY: test demo lint format bench bundle

test:
	bash scripts/test.sh

demo:
	bash scripts/demo.sh $(ARGS)

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/lint-imports --no-cache

format:
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

bench:
	.venv/bin/python -m bench.ingest

bundle:
	bash deploy/bundle/build.sh $(ARGS)
