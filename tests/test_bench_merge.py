"""bench/run.py: a partial run (--skip) merges into results.json and README.md keeps its history.

Before this, `--skip` dropped every skipped section from results.json and regenerating README.md
deleted its hand-written `## ` sections; these tests run no benchmark, only the merge and writing.
"""

from __future__ import annotations

import copy
import json

from bench import run as bench

MACHINE_OLD = {"cpu": "Old Xeon", "logical_cores": 2, "torch_threads": 2, "torch": "2.0", "numpy": "2",
               "faiss": "1.8", "python": "3.11", "memory_gb": 8.0, "loadavg_start": [1.0]}  # fmt: skip
MACHINE_NEW = {**MACHINE_OLD, "cpu": "New EPYC"}
HISTORY = (
    b"## Issue #17: one transpose and cast of the pixels\r\n\r\n| run | batch 1 |\n|---|---|\n"
    b"| 1 | 0.753 |\n\nTrailing text \xe2\x80\x94 and no final newline\n\n## Issue #7: second section"
)


def _predict(ratio: float) -> dict:
    batch = {"predict_vs_backbone_ratio": ratio, "predict_vs_engine_backbone_ratio": ratio / 2,
             "engine_backbone_ceiling_ratio": 0.9, "speedup_vs_eager_predict": 2.0,
             "images_per_s": {"predict": 40.0, "backbone": 50.0, "engine_backbone": 45.0, "predict_eager": 20.0}}  # fmt: skip
    return {"batches": {"1": copy.deepcopy(batch), "16": copy.deepcopy(batch)}, "peak_rss_mb": 100.0,
            "max_abs_diff_vs_eager_path": {"probs": 1e-6, "maps": 1e-6, "embedding": 1e-8}}  # fmt: skip


def _old() -> dict:
    return {
        "machine": MACHINE_OLD,
        "errors": {"predict": "RuntimeError: old predict failure", "train": "OSError: old train failure"},
        "predict": {**_predict(0.5), "only_in_old_predict": 1},
        "index": {
            "workers": "2 threads",
            "runs": {"36": {"images_per_s": 55.0}},
            "measured_at": "2026-01-01T10:00:00",
        },
        "app": {"seconds_to_first_200": 6.6, "note": "warm"},
        "search": {"search_ms_at_100k": {"attribute_api_numpy": 12.5}},
        "predict_vs_backbone_ratio": {"1": 0.5, "16": 0.5},
        "search_ms_at_100k": 99.0,  # stale: does not match the search section it claims to come from
        "search_ms_at_1m": 500.0,  # no 1m entry in any section: must not survive the merge
        "note": "hand-added splice note",
    }


def _new() -> dict:
    predict = bench.stamp(_predict(0.8), MACHINE_NEW)
    return {"machine": MACHINE_NEW, "targets": bench.TARGETS, "errors": {}, "checkpoint": "default",
            "checkpoint_note": None, "predict": predict}  # fmt: skip


def test_skipped_sections_are_kept_and_marked_with_where_they_come_from():
    old, new = _old(), _new()
    before = copy.deepcopy((old, new))
    merged = bench.merge_results(new, old, ran=["predict"])
    for name in ("index", "app", "search"):
        assert merged[name]["kept_from_earlier_run"] is True
        assert {
            k: v for k, v in merged[name].items() if k not in ("kept_from_earlier_run", "measured_on")
        } == (old[name])
    assert merged["index"]["measured_at"] == "2026-01-01T10:00:00"
    assert merged["app"]["measured_on"] == bench.machine_summary(MACHINE_OLD)  # legacy: from the old machine
    assert "measured_at" not in merged["app"]
    assert (old, new) == before  # pure: neither input is modified


def test_sections_that_ran_replace_the_old_ones_whole_and_are_stamped():
    old, new = _old(), _new()
    merged = bench.merge_results(new, old, ran=["predict"])
    assert merged["predict"] == new["predict"]
    assert "only_in_old_predict" not in merged["predict"]
    assert "kept_from_earlier_run" not in merged["predict"]
    assert merged["predict"]["measured_on"] == bench.machine_summary(MACHINE_NEW)
    assert merged["predict"]["measured_at"][:2] == "20"
    assert merged["machine"] == MACHINE_NEW and "note" not in merged  # the run's own top level wins
    assert [k for k in merged if k in bench.SECTIONS] == ["predict", "index", "search", "app"]  # run order


def test_derived_keys_are_recomputed_from_the_merged_sections():
    merged = bench.merge_results(_new(), _old(), ran=["predict"])
    assert merged["predict_vs_backbone_ratio"] == {"1": 0.8, "16": 0.8}
    assert merged["predict_vs_engine_backbone_ratio"] == {"1": 0.4, "16": 0.4}
    assert merged["engine_backbone_ceiling_ratio"] == {"1": 0.9, "16": 0.9}
    assert merged["search_ms_at_100k"] == 12.5  # from the kept search section, not the stale 99.0
    assert "search_ms_at_1m" not in merged


def test_errors_of_sections_that_ran_are_dropped_and_of_skipped_ones_kept():
    merged = bench.merge_results(_new(), _old(), ran=["predict", "allocator"])
    assert merged["errors"] == {"train": "OSError: old train failure"}

    failed = {**_new(), "errors": {"index": "ValueError: new"}}
    merged = bench.merge_results(failed, _old(), ran=["predict", "index"])
    assert merged["errors"] == {"train": "OSError: old train failure", "index": "ValueError: new"}
    assert merged["index"]["kept_from_earlier_run"] is True  # its old figures stay, marked, beside the error


def test_a_corrupt_or_missing_old_file_is_said_in_one_line_and_only_new_sections_written(tmp_path, capsys):
    cases = {
        "missing.json": None,
        "bad.json": '{"predict": ',
        "list.json": "[1, 2]",
        "binary.json": b"\xff\xfe",
    }
    for name, content in cases.items():
        path = tmp_path / name
        if isinstance(content, str):
            path.write_text(content)
        elif content is not None:
            path.write_bytes(content)
        out = bench.combine(_new(), {"index", "app"}, path)
        assert set(out) & set(bench.SECTIONS) == {"predict"}
        assert out["predict_vs_backbone_ratio"] == {"1": 0.8, "16": 0.8}
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "writing only this run's sections" in err[0], (name, err)
        assert "Traceback" not in err[0]
    assert "not valid JSON" in (bench.load_previous(tmp_path / "bad.json")[1] or "")
    assert "not an object" in (bench.load_previous(tmp_path / "list.json")[1] or "")


def test_a_full_run_ignores_the_old_file_and_a_partial_one_merges(tmp_path, capsys):
    previous = tmp_path / "results.json"
    previous.write_text(json.dumps(_old()))
    full = bench.combine(_new(), set(), previous)
    assert set(full) & set(bench.SECTIONS) == {"predict"} and "note" not in full
    partial = bench.combine(_new(), {"index", "app", "search"}, previous)
    assert set(partial) & set(bench.SECTIONS) == {"predict", "index", "app", "search"}
    assert "kept ['index', 'search', 'app']" in capsys.readouterr().err


def _results_with_kept_sections() -> dict:
    return bench.merge_results(_new(), _old(), ran=["predict"])


def test_readme_keeps_the_hand_written_sections_byte_for_byte(tmp_path):
    (tmp_path / "README.md").write_bytes(b"# old title\n\n| old | table |\n\n" + HISTORY)
    results = _results_with_kept_sections()
    bench.write_report(results, tmp_path)
    written = (tmp_path / "README.md").read_bytes()
    assert written.endswith(b"\n\n" + HISTORY)
    assert written.startswith(bench.readme(results).rstrip("\n").encode() + b"\n\n## Issue #17")
    assert b"old title" not in written
    assert json.loads((tmp_path / "results.json").read_text()) == results
    assert (tmp_path / "results.json").read_text() == json.dumps(results, indent=1) + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "results.json"]  # no temporaries left

    bench.write_report(results, tmp_path)  # a second run splices at the same place: nothing doubles
    assert (tmp_path / "README.md").read_bytes() == written


def test_readme_without_history_is_the_generated_part_alone():
    assert bench.readme_with_history("# t\n\nbody\n", None) == b"# t\n\nbody\n"
    assert bench.readme_with_history("# t\n\nbody\n", b"# t\n\nno sections, ## not at a line start\n") == (
        b"# t\n\nbody\n"
    )


def test_the_table_notes_when_kept_sections_were_measured():
    text = bench.readme(_results_with_kept_sections())
    note = next(line for line in text.splitlines() if line.startswith("Kept from an earlier run"))
    assert "index measured 2026-01-01T10:00:00 on Old Xeon" in note
    assert "app measured at an unrecorded time on Old Xeon" in note
    assert "predict" not in note
    assert not any(line.startswith("## ") for line in text.splitlines())  # else the next splice cuts there
    fresh = bench.readme(bench.derive(_new()))
    assert "Kept from an earlier run" not in fresh
