"""`python reproduce.py --table main`: reproduce the paper's tables from results.db (typer CLI).

Thin on purpose: every command lives in repro/cli/ (the headline `--table` in repro/cli/table.py),
the table pipeline (plan, run or reuse, print) in repro/pipeline.py.
"""

from repro.cli import app

if __name__ == "__main__":
    app()
