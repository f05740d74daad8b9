"""Static scan speed: seconds per 1,000 Python files, one JSON line.

The corpus is generated here (deterministic, BENCH_SCAN_FILES files, default
3,340: the size of the application the old scan was measured on, 4.6 s) and
looks like a schema-per-tenant application: mapped classes with the
placeholder, services running raw SQL (multi-line strings, f-strings,
``text()``/``execute()`` with parameters), API modules, tests, alembic
migrations and scripts. Each round runs ``harness scan CORPUS --json`` as a
child process, once with this tree (after) and once with the baseline commit's
(before, bench/baseline.py); rounds are interleaved and the medians reported.
Goal: after/before <= 2 (the SQL parsing costs at most twice the old scan).
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from baseline import ROOT, baseline_tree, emit, progress, ratio, run_bounded, stop_on_sigterm

FILES = int(os.environ.get("BENCH_SCAN_FILES", "3340"))
REPEATS = int(os.environ.get("BENCH_SCAN_REPEATS", "3"))
TIMEOUT = float(os.environ.get("BENCH_SCAN_TIMEOUT", "600"))
TABLES = ["products", "orders", "order_lines", "customers", "invoices", "vinted_products", "stock_moves",
          "shipments", "payments", "refunds", "coupons", "carts"]

MODEL = '''

class {cls}(TenantBase):
    __tablename__ = "{table}"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(200))
    created: Mapped[dt.datetime] = mapped_column(default=dt.datetime.now)

    def label(self) -> str:
        """The name shown in lists."""
        return f"{{self.name}} ({{self.id}})"
'''

SERVICE = '''

def {name}(session, tenant: str, limit: int = 50):
    """Rows of {table} for one tenant, newest first."""
    logger.debug("loading {table} for %s", tenant)
    rows = session.execute(text("""
        SELECT t.id, t.name, count(o.id) AS n
        FROM {table} t
        LEFT JOIN {schema}.orders o ON o.product_id = t.id
        WHERE t.owner = :owner  -- the tenant's rows only
        GROUP BY t.id, t.name
        ORDER BY t.id DESC
        LIMIT :limit
    """), {{"owner": tenant, "limit": limit}}).all()
    result = []
    for row in rows:
        if row.n > {n}:
            result.append({{"id": row.id, "name": row.name, "orders": row.n}})
        else:
            logger.info(f"skipping {{row.id}}: only {{row.n}} orders")
    return result


def {name}_count(cursor, schema: str) -> int:
    cursor.execute(f"SELECT count(*) FROM {{schema}}.{table} WHERE id > %s", ({n},))
    (count,) = cursor.fetchone()
    return count
'''

API = '''

@router.get("/{name}")
def get_{name}(request, session=Depends(tenant_session)):
    """List {name} of the request's tenant."""
    tenant = request.state.tenant
    if not tenant:
        raise HTTPException(status_code=404, detail="no tenant")
    items = services.{name}(session, tenant, limit=int(request.query_params.get("limit", 50)))
    return {{"items": items, "count": len(items), "tenant": tenant}}
'''

TEST = '''

def test_{name}_{n}(session, tenant):
    session.execute(text("INSERT INTO {schema}.{table} (id, owner, name) VALUES (:id, :owner, 'x')"),
                    {{"id": {n}, "owner": tenant}})
    rows = services.{name}(session, tenant)
    assert all(r["id"] != {n} for r in rows)
    assert len(rows) <= 50
'''

MIGRATION = '''

def upgrade() -> None:
    op.add_column("{table}", sa.Column("note_{n}", sa.Text(), nullable=True), schema="tenant")
    op.execute("""
        UPDATE tenant.{table}
        SET note_{n} = ''
        WHERE note_{n} IS NULL
    """)


def downgrade() -> None:
    op.drop_column("{table}", "note_{n}", schema="tenant")
'''

HEADERS = {
    "models": "import datetime as dt\n\nfrom sqlalchemy import String\nfrom sqlalchemy.orm import Mapped, "
              "mapped_column\n\nfrom app.db import TenantBase\n",
    "services": "import logging\n\nfrom sqlalchemy import text\n\nlogger = logging.getLogger(__name__)\n",
    "api": "from fastapi import APIRouter, Depends, HTTPException\n\nfrom app import services\nfrom app.db import "
           "tenant_session\n\nrouter = APIRouter()\n",
    "tests": "from sqlalchemy import text\n\nfrom app import services\n",
    "migrations": "import sqlalchemy as sa\nfrom alembic import op\n\nrevision = '{n:04d}'\n",
}
LAYOUT = [("models", "app/models", MODEL, 6), ("services", "app/services", SERVICE, 3), ("api", "app/api", API, 6),
          ("tests", "tests", TEST, 5), ("migrations", "alembic/versions", MIGRATION, 1)]


def write_corpus(folder: Path, files: int, seed: int = 14) -> int:
    """``files`` modules under ``folder``; returns their total size in bytes."""
    rng = random.Random(seed)
    size = 0
    (folder / "app").mkdir(parents=True)
    (folder / "app" / "db.py").write_text(
        "from sqlalchemy.orm import DeclarativeBase\n\n\nclass Base(DeclarativeBase):\n    pass\n\n\n"
        "class TenantBase(Base):\n    __abstract__ = True\n    __table_args__ = {'schema': 'tenant'}\n\n\n"
        "def tenant_session(engine, schema):\n"
        "    return engine.execution_options(schema_translate_map={'tenant': schema})\n")
    for n in range(files - 1):
        kind, where, template, blocks = LAYOUT[n % len(LAYOUT)]
        body = [HEADERS[kind].format(n=n)]
        for block in range(blocks):
            table = rng.choice(TABLES)
            body.append(template.format(cls=f"{table.title().replace('_', '')}{n}x{block}", table=table,
                                        name=f"{table}_{n}_{block}", schema=rng.choice(["tenant", "{schema}"]),
                                        n=rng.randrange(1000)))
        path = folder / where / f"m{n // 300}" / (f"test_m{n}.py" if kind == "tests" else f"m{n}.py")
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(body)
        path.write_text(text)
        size += len(text)
    return size


def scan_once(tree: Path, corpus: Path) -> float | None:
    status, seconds = run_bounded([sys.executable, "-m", "harness.cli", "scan", str(corpus), "--json"], tree=tree,
                                  timeout=TIMEOUT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if status not in (0, 1):
        progress(f"scan with {tree} exited {status}")
        return None
    return seconds


def main() -> None:
    stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="harness-bench-scan-") as scratch, baseline_tree() as before_tree:
        corpus = Path(scratch) / "corpus"
        size = write_corpus(corpus, FILES)
        progress(f"scan corpus: {FILES} files, {size / 1e6:.1f} MB in {corpus}")
        after, before = [], []
        for round_ in range(REPEATS):
            seconds = scan_once(ROOT, corpus)
            after.append(seconds)
            if before_tree is not None:
                before.append(scan_once(before_tree, corpus))
            progress(f"scan round {round_ + 1}/{REPEATS}: after {seconds}s, before {before[-1] if before else None}s")

    def per_1000(values: list[float | None]) -> float | None:
        measured = [v for v in values if v is not None]
        return round(statistics.median(measured) / FILES * 1000, 3) if measured else None

    emit(figure="scan_seconds_per_1000_files", files=FILES, megabytes=round(size / 1e6, 1), repeats=REPEATS,
         after=per_1000(after), before=per_1000(before), ratio=ratio(per_1000(after), per_1000(before)),
         goal="after/before <= 2")
    model_inference()


def model_inference(n: int = 2000) -> None:
    """A model's scope inferred for n tenant models and the n shared ones they point at (quadratic before the
    index: about 10 s for n=2000)."""
    import time

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    from harness.scan.models import read_models
    from test_scan_models import many_models

    facts = many_models(n)
    timings = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        read_models(facts)
        timings.append(time.perf_counter() - started)
    emit(figure="scan_model_inference_seconds", models=2 * n, seconds=round(statistics.median(timings), 3),
         goal="grows with the number of models, not its square")


if __name__ == "__main__":
    main()
