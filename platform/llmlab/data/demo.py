"""A small, offline demo corpus built from text already on the machine.

Two domains, so that later work (mixing, per-domain evaluation) has something to tell apart:

* ``python_docs``: docstrings of the Python standard library, found by parsing its source with
  `ast`. Nothing is imported, so no module side effects and no optional dependencies matter.
* ``package_docs``: the long descriptions (README payloads) of the installed distributions.

Both walks are sorted, so the same machine always yields the same rows.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import random
import sysconfig
from collections.abc import Iterator
from pathlib import Path

MIN_CHARS = 200  # shorter texts are mostly one-liners ("Return self.") and teach little
DOMAINS = ("python_docs", "package_docs")

# Stdlib folders whose docstrings are tests, vendored copies or site-packages, not the library.
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _stdlib_files() -> Iterator[tuple[str, Path]]:
    """(dotted module name, path) of every stdlib .py file, in sorted order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for dirpath, dirnames, filenames in os.walk(root):
        # Pruning in place keeps os.walk out of site-packages and tests, and fixes the order.
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = Path(dirpath) / name
                parts = path.relative_to(root).with_suffix("").parts
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                yield ".".join(parts), path


def _python_docs(limit: int) -> Iterator[str]:
    count = 0
    for module, path in _stdlib_files():
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):  # a few stdlib files are deliberately broken
            continue
        for node in ast.walk(tree):
            if not isinstance(node, _DOC_NODES):
                continue
            doc = ast.get_docstring(node)
            if doc is None or len(doc) < MIN_CHARS:
                continue
            name = module if isinstance(node, ast.Module) else f"{module}.{node.name}"
            yield f"{name}\n\n{doc}"
            count += 1
            if count >= limit:
                return


def _description(dist: importlib.metadata.Distribution) -> str:
    meta = dist.metadata
    # Metadata 2.1+ puts the description in the message body; older versions in a header.
    text = meta.get("Description") or ""
    if not text.strip() or text.strip() == "UNKNOWN":
        payload = meta.get_payload() if hasattr(meta, "get_payload") else None  # type: ignore[attr-defined]
        text = payload if isinstance(payload, str) else ""
    return text.strip()


def _package_docs(limit: int) -> Iterator[str]:
    # Only the environment's site-packages: sys.path changes at run time (importing Ray adds its
    # vendored packages), and the corpus must not depend on what was imported before.
    paths = sysconfig.get_paths()
    site_dirs = list(dict.fromkeys([paths["purelib"], paths["platlib"]]))
    by_name: dict[str, importlib.metadata.Distribution] = {}
    for dist in importlib.metadata.distributions(path=site_dirs):
        name = (dist.metadata.get("Name") or "").lower().replace("_", "-")
        # A name installed twice counts once (the first copy, as an import would pick).
        if name and name not in by_name:
            by_name[name] = dist
    count = 0
    for name in sorted(by_name):
        text = _description(by_name[name])
        if len(text) >= MIN_CHARS:
            yield text
            count += 1
            if count >= limit:
                return


def build_demo_rows(docs_per_domain: int) -> list[dict[str, str]]:
    """Rows ``{"text", "domain"}``: up to `docs_per_domain` documents of each domain, in order."""
    if docs_per_domain <= 0:
        raise ValueError(f"docs_per_domain must be > 0, got {docs_per_domain}")
    rows: list[dict[str, str]] = []
    for domain, texts in (
        ("python_docs", _python_docs(docs_per_domain)),
        ("package_docs", _package_docs(docs_per_domain)),
    ):
        rows.extend({"text": text, "domain": domain} for text in texts)
    return rows


def plant_duplicates(rows: list[dict[str, str]], share: float, seed: int = 0) -> list[dict[str, str]]:
    """The rows plus copies of a few "popular" ones, as web crawls have.

    Copies make up `share` of the result; half are exact, half have 1% of their words edited, at
    least one (near duplicates: word 5-gram Jaccard about 0.9, less for short documents). Popular
    rows are 5% of the rows; copies keep their source's domain and are spread through the corpus.
    Deterministic for a given seed.
    """
    if not 0 <= share < 1:
        raise ValueError(f"share must be in [0, 1), got {share}")
    copies = round(len(rows) * share / (1 - share))
    if copies == 0 or not rows:
        return list(rows)
    rng = random.Random(seed)
    popular = rng.sample(range(len(rows)), max(1, len(rows) // 20))
    out = list(rows)
    for index in range(copies):
        source = rows[rng.choice(popular)]
        text = source["text"] if index % 2 == 0 else _edit_words(source["text"], 0.01, rng)
        out.insert(rng.randrange(len(out) + 1), {**source, "text": text})
    return out


def _edit_words(text: str, rate: float, rng: random.Random) -> str:
    """Delete, repeat or swap in another of the text's words at `rate` per word; at least one edit."""
    words = text.split(" ")
    edits = max(1, round(rate * len(words)))
    for _ in range(edits):
        at = rng.randrange(len(words))
        kind = rng.randrange(3)
        if kind == 0 and len(words) > 1:
            del words[at]
        elif kind == 1:
            words.insert(at, words[at])
        else:
            words[at] = rng.choice(words) + "s"
    return " ".join(words)


def write_demo_corpus(out_dir: str | Path, docs_per_domain: int) -> list[Path]:
    """Write one ``{domain}.jsonl`` per domain under `out_dir`; returns the paths in order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = build_demo_rows(docs_per_domain)
    files = []
    for domain in DOMAINS:
        path = out / f"{domain}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                if row["domain"] == domain:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        files.append(path)
    return files
