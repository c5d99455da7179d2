"""Generative suites (code_body, docstring, continuation) from held-out documents: rows cut from real
functions found with `ast`, splits disjoint by document, lm-eval generate_until YAML, baselines scored
with the suites' own metrics, clear errors (builder and config) when a code suite meets no code, and
memory bounded by the caps."""

import json
import random
import sysconfig
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from evalgen import eval_config

from pipeline.config.run import RunConfig
from pipeline.data.shards import write_shard
from pipeline.errors import UserError
from pipeline.records import Manifest
from pipeline.storage import open_store
from pipeline.suites.build import build_suites, suites_prefix
from pipeline.suites.code import documented_functions, may_have_functions, name_words
from pipeline.suites.generative import (
    EXAMPLES,
    STOP,
    GenerativeRows,
    baselines,
    code_body_examples,
    docstring_examples,
    split_of,
)
from pipeline.suites.heldout import HeldoutDoc, doc_hash
from pipeline.suites.metrics import METRICS, first_line_exact, rouge_l, sentence_chrf, slack_chars, within_budget

VERBS = ["read", "write", "parse", "merge", "split", "count", "load", "check"]
NOUNS = ["header", "record", "buffer", "token", "path", "table", "entry", "window"]
GENERATIVE = ["code_body", "docstring", "continuation"]


def python_module(i: int) -> str:
    """A module of documented functions and one documented method (indented: dedented by the builder)."""
    rng = random.Random(i)
    parts = [f'"""Module {i}."""\n\nimport os\n']
    for k in range(4):
        name = f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}_{i}_{k}"
        arg = rng.choice(NOUNS)
        lines = range(rng.randint(2, 9))
        body = "".join(f"    {rng.choice(NOUNS)}_{j} = os.path.join({arg}, '{j * k}')\n" for j in lines)
        parts.append(
            f'\ndef {name}({arg}, limit={k}):\n    """{rng.choice(VERBS).capitalize()} the {rng.choice(NOUNS)} of '
            f'{arg} {i}.\n\n    More about it.\n    """\n{body}    return {arg}\n'
        )
    parts.append(
        f'\nclass Thing{i}:\n    def size_of_{i}(self, item):\n        """Size of item {i}."""\n'
        "        if item:\n            return len(item)\n        return 0\n"
    )
    return "".join(parts)


def prose_document(i: int) -> str:
    rng = random.Random(1000 + i)
    return "".join(" ".join(rng.choice(VERBS + NOUNS) for _ in range(rng.randint(6, 12))) + ".\n" for _ in range(30))


def manifest_of(store, texts: list[str], name: str, per_shard: int = 50) -> Manifest:
    """A manifest whose held-out split is `texts`, `per_shard` to a shard (the data stage's writer)."""
    entries = []
    for start in range(0, len(texts), per_shard):
        part = texts[start : start + per_shard]
        table = pa.table(
            {
                "doc_key": pa.array([f"d{start + i}#0" for i in range(len(part))], pa.string()),
                "label": pa.array([None] * len(part), pa.string()),
                "text": pa.array(part, pa.string()),
            }
        )
        key = f"datasets/{name}/shards/r/heldout/part-{start:05d}.arrow"
        entries.append({**write_shard(store, key, table, 0), "docs": len(part)})
    tokenizer = {"uri": "", "key": "", "sha256": "0" * 64, "vocab_size": 300, "eos_id": 0, "pad_id": 1}
    return Manifest.from_dict(
        {
            "dataset": name,
            "version": 1,
            "seq_len": 8,
            "dtype": "uint16",
            "tokenizer": tokenizer,
            "shards": {"train": [], "val": [], "heldout": entries},
        }
    )


def read_rows(store, prefix, suite, split):
    return [json.loads(line) for line in store.read(f"{prefix}/{suite}/{split}.jsonl").decode().splitlines()]


def test_code_suites_rows_splits_yaml_and_baselines(tmp_path):
    store = open_store(str(tmp_path / "store"))
    texts = [python_module(i) for i in range(60)] + ["def broken(:\n    pass\n", prose_document(0)]
    manifest = manifest_of(store, texts, "code")
    config = eval_config(enabled=GENERATIVE, gen_test_examples=40, gen_per_doc=3, code_body_max_lines=3)
    cfg = config.suites
    index = build_suites(store, manifest, config)
    prefix = index.prefix
    functions = {f.name: f for text in texts for f in documented_functions(text)}
    assert len(functions) == 60 * 5  # the broken file and the prose have none

    for suite in GENERATIVE:
        task = index.tasks[f"sora_{suite}"]
        assert task.counts["test"] == 40 and task.counts["train"] > 0
        hashes = {split: set(h) for split, h in task.doc_hashes.items()}
        assert not (hashes["train"] & hashes["test"] or hashes["train"] & hashes["validation"])
        assert not hashes["validation"] & hashes["test"]
        for split in ("train", "validation", "test"):
            rows = read_rows(store, prefix, suite, split)
            assert len(rows) == task.counts[split]
            assert all(split_of(cfg, row["doc_hash"]) == split for row in rows)  # by document, salted hash
            assert all(row["prompt"] and row["answer"].strip() for row in rows)
        spec = yaml.safe_load(store.read(f"{prefix}/{suite}/sora_{suite}.yaml"))
        assert spec["output_type"] == "generate_until" and spec["doc_to_text"] == "prompt"
        assert spec["generation_kwargs"] == {
            "until": STOP[suite],
            "max_gen_toks": getattr(cfg, f"{suite}_max_tokens"),
            "do_sample": False,
        }
        # Baselines are the same metrics on trivial answers, recorded per metric.
        splits = {split: read_rows(store, prefix, suite, split) for split in ("train", "validation", "test")}
        assert task.chance.baselines == baselines(suite, splits)

    for row in read_rows(store, prefix, "code_body", "test"):
        function = functions[row["name"]]
        # The prompt ends at the docstring's closing quotes; the newline after them starts the answer.
        assert row["prompt"].startswith(("def ", "@")) and row["prompt"].endswith('"""')
        assert function.summary in row["prompt"]
        body = [line for line in function.body if line.strip()]
        assert row["answer"].startswith("\n") and row["answer"][1:].splitlines() == body[:3]
        assert row["complete"] == (len(body) <= 3)
    for row in read_rows(store, prefix, "docstring", "test"):
        function = functions[row["name"]]
        assert row["answer"] == function.summary and function.summary not in row["prompt"]
        assert row["prompt"].endswith(f'{row["name"]}.__doc__ = """') and row["prompt"].startswith("def ")
        assert row["complete"] is True  # the synthetic summaries are shorter than docstring_max_chars
    test = read_rows(store, prefix, "docstring", "test")
    words = sum(rouge_l(name_words(r["name"]), r["answer"]) for r in test) / len(test)
    assert index.tasks["sora_docstring"].chance.baselines["rouge_l"]["name_words"] == pytest.approx(words)
    for row in read_rows(store, prefix, "continuation", "test"):
        assert row["prompt"] == row["prompt"].rstrip() and row["answer"].startswith("\n") and not row["complete"]
        assert len(row["answer"].lstrip()) <= cfg.continuation_chars

    # Deterministic: the same rows whatever the shard order.
    again = open_store(str(tmp_path / "again"))
    build_suites(again, manifest_of(again, texts[::-1], "code", per_shard=7), config)
    for suite in GENERATIVE:
        assert again.read(f"{prefix}/{suite}/test.jsonl") == store.read(f"{prefix}/{suite}/test.jsonl")


def test_methods_are_dedented_and_unparsable_text_has_no_functions():
    functions = documented_functions(python_module(3))
    method = [f for f in functions if f.name == "size_of_3"][0]
    assert method.header == ["def size_of_3(self, item):"] and method.body[0] == "    if item:"
    assert documented_functions("def broken(:\n") == () and documented_functions("no code here") == ()
    one_liner = 'def f():\n    """Doc."""; return 1\n'
    assert documented_functions(one_liner) == ()  # a statement on the docstring's line: no whole lines


def test_prose_corpus_continuation_only(tmp_path):
    store = open_store(str(tmp_path / "store"))
    manifest = manifest_of(store, [prose_document(i) for i in range(40)], "prose")
    index = build_suites(store, manifest, eval_config(enabled=["continuation"], gen_test_examples=30))
    assert index.tasks["sora_continuation"].counts["test"] == 30
    for suite in ("code_body", "docstring"):
        config = eval_config(enabled=["continuation", suite])
        message = rf"{suite}: none of the 40 held-out documents has a Python function"
        with pytest.raises(UserError, match=message) as error:
            build_suites(store, manifest, config)
        assert "\n" not in str(error.value) and f"drop {suite} from eval.suites.enabled" in str(error.value)
        assert store.list(suites_prefix(manifest, config.suites)) == []


def test_form_feed_lines_keep_ast_line_numbers():
    # str.splitlines would break at the form feed too and shift the function's lines by one.
    text = 'import os\n\x0c\ndef scale(x):\n    """Scale x by two."""\n    return x * 2\n'
    (function,) = documented_functions(text)
    assert function.header == ["def scale(x):"] and function.body == ["    return x * 2"]


def test_cheap_checks_and_caps_before_parsing():
    long_doc = 'def busy(x):\n    """Do a lot of things: ' + "more " * 140 + '\n    """\n    return x\n'
    short = python_module(1)
    assert not may_have_functions("def f(x):\n    return x\n") and may_have_functions(short)
    docs = [HeldoutDoc(doc_hash(t), "k", None, t) for t in (short, long_doc)]
    cfg = eval_config(enabled=GENERATIVE).suites
    # code_body skips the function whose docstring makes its prompt longer than code_body_prompt_chars
    assert [row["name"] for _, row in code_body_examples(docs[1], cfg)] == []
    assert [row["name"] for _, row in docstring_examples(docs[1], cfg)] == ["busy"]
    assert all(len(row["prompt"]) <= cfg.code_body_prompt_chars for _, row in code_body_examples(docs[0], cfg))
    # a document over gen_max_doc_bytes is left to continuation: the code suites never parse it
    big = HeldoutDoc(doc_hash(short * 40), "k", None, short * 40)
    capped = cfg.model_copy(update={"gen_max_doc_bytes": len(short) * 20})
    builders = {suite: GenerativeRows(suite, capped) for suite in GENERATIVE}
    for builder in builders.values():
        builder.add(big)
    assert [builders[suite].parsed for suite in GENERATIVE] == [0, 0, 1]


def test_metrics_score_within_the_reference_budget():
    reference = "\n    total = sum(values)\n    return total"
    # A zero-shot model runs on past the answer: the lines after the reference's count are not scored.
    rambling = reference + "\n    print(total)\n    values.clear()"
    assert within_budget(rambling, reference) == reference
    assert rouge_l(rambling, reference) == 1.0 and sentence_chrf(rambling, reference) == 100.0
    # One long line: cut to len(reference) + slack characters, at the last word end within them.
    words = "alpha beta gamma delta epsilon zeta eta theta"
    cut = within_budget(words, "alpha beta")
    assert cut == "alpha beta gamma" and len(cut) <= len("alpha beta") + slack_chars("alpha beta")
    assert within_budget("x" * 50, "short") == "x" * (5 + slack_chars("short"))  # no word end: a hard cut
    assert within_budget("\n\n    total = 0", reference) == "\n\n    total = 0"  # blank lines are free
    # Baselines go through the same metrics (METRICS), so the same cut applies to them.
    assert METRICS["rouge_l"] is rouge_l


def test_metrics_on_hand_made_examples():
    reference = "    total = sum(values)\n    return total / len(values)"
    assert first_line_exact("total = sum(values)\nreturn 0", reference) == 1.0
    assert first_line_exact("total = 0", reference) == 0.0
    assert sentence_chrf(reference, reference) == 100.0 and rouge_l(reference, reference) == 1.0
    assert 0 < rouge_l("return total", reference) < 1 and 0 < sentence_chrf("return total", reference) < 100
    assert rouge_l("", reference) == 0.0
    assert name_words("read_heldout") == "read heldout" and name_words("getHTTPResponse") == "get http response"
    splits = {
        "train": [{"answer": "Return the size.", "name": "x"}, {"answer": "Return the size.", "name": "y"}],
        "validation": [],
        "test": [
            {"prompt": "a\nReturn the size.\n", "answer": "Return the size.", "name": "size"},
            {"prompt": "b\n", "answer": "Read a file.", "name": "read_file"},
        ],
    }
    docstring = baselines("docstring", splits)["rouge_l"]
    assert docstring["most_frequent_line"] == pytest.approx(0.5)  # perfect once, no word shared once
    assert docstring["name_words"] == pytest.approx((rouge_l("size", "Return the size.") + 0.8) / 2)
    code = baselines("code_body", splits)
    assert code["first_line_exact"] == {"copy_last_line": 0.5, "most_frequent_line": 0.5}


def test_code_suites_need_a_code_source_in_the_run_config(tmp_path):
    raw = {"data": {"sources": [{"kind": "jsonl", "uri": str(tmp_path / "x.jsonl")}]}}
    assert RunConfig.model_validate(raw).eval.suites.enabled == ["heldout_ppl", "cloze", "classify"]
    with pytest.raises(ValueError, match=r"enabled has code_body, which need .* data\.sources\[\]\.content: code"):
        RunConfig.model_validate(raw | {"eval": {"suites": {"enabled": ["code_body", "cloze"]}}})
    code = {"data": {"sources": [{"kind": "python-stdlib"}]}}
    assert RunConfig.model_validate(code).eval.suites.enabled[3:] == GENERATIVE  # Python corpus: on by default
    py_files = {"data": {"sources": [{"kind": "text", "uri": "src/**/*.py", "content": "code"}]}}
    assert RunConfig.model_validate(py_files).eval.suites.enabled[3:] == GENERATIVE
    # Code of unknown language (a JS corpus, say): continuation only, as code_body and docstring
    # would fail the build after its full pass; enabled explicitly, they are the user's call.
    marked = {"data": {"sources": [{"kind": "jsonl", "uri": "x", "content": "code"}]}}
    assert RunConfig.model_validate(marked).eval.suites.enabled[3:] == ["continuation"]
    assert RunConfig.model_validate(marked | {"eval": {"suites": {"enabled": ["docstring"]}}})


def test_building_code_suites_streams(tmp_path):
    # Four times the held-out code adds hashes to what the builder holds, not the text it cut rows from
    # (the caps are small enough to be full at 1x already, so the difference is per document).
    import tracemalloc

    peaks, size = {}, {}
    for scale in (1, 4):
        store = open_store(str(tmp_path / f"x{scale}"))
        # ~18 KB modules, the same sizes at every scale: the peak holds one document's syntax tree
        texts = [f"# copy {i:06d}\n" + python_module(i % 60) * 12 for i in range(60 * scale)]
        manifest = manifest_of(store, texts, "big", per_shard=40)
        size[scale] = sum(map(len, texts))
        tracemalloc.start()
        caps = dict(gen_train_examples=50, gen_validation_examples=10, gen_test_examples=30)  # full at 1x
        build_suites(store, manifest, eval_config(enabled=GENERATIVE, **caps))
        peaks[scale] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    print(
        f"held-out code {size[1] / 2**20:.1f} -> {size[4] / 2**20:.1f} MiB: peak {peaks[1] / 2**20:.2f} -> "
        f"{peaks[4] / 2**20:.2f} MiB"
    )
    # Holding the text would grow the peak by the 3 MiB added; what it grows by (~0.3 MiB, measured) is
    # when the parse of one document's syntax tree meets the fullest pools, not a per-document cost.
    assert peaks[4] - peaks[1] < (size[4] - size[1]) / 4


def test_prompts_end_where_the_tokenizer_ends_a_token():
    # A byte-level BPE trained on real Python merges a newline with the indentation after it, so a
    # prompt ending in a bare newline ends in a token rarely seen in training (the tiny model answered
    # with newlines only): prompts end before the newline, which starts the answer.
    from sora.tokenizer import train_bpe

    paths = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in paths if 3000 < p.stat().st_size < 30000]
    tokenizer = train_bpe(texts[:25], vocab_size=1000)
    newline = tokenizer.encode("\n").tokens[0]  # 'Ċ', the byte-level form of a lone newline
    cfg = eval_config(enabled=GENERATIVE).suites
    checked = 0
    for text in texts[25:40]:
        doc = HeldoutDoc(doc_hash(text), "k", None, text)
        for suite in ("code_body", "docstring", "continuation"):
            for _, row in EXAMPLES[suite](doc, cfg):
                assert tokenizer.encode(row["prompt"]).tokens[-1] != newline, (suite, row["prompt"][-40:])
                checked += 1
    assert checked > 100
    assert tokenizer.encode(row["prompt"] + "\n").tokens[-1] == newline  # what the old prompts ended with
