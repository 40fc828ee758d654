"""Tests of the benchmark's Python tools (goals.py, variants_table.py, torch_baseline.py's row
format), run by ctest (bench_scripts) where no GPU is needed: these scripts read the GPU machine's
output, and a break in them would only show there, in device time. Standard library only.

    python3 bench/test_scripts.py SN_BENCH     # SN_BENCH: the built sn_bench (CPU backend here)
"""
import copy
import csv
import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SN_BENCH = None  # set from argv
# A real run's output (H100, bdc3f72, sn_bench before the `path` field) and what goals.py said of it
# in bench/NOTES.md ("Goals at bdc3f72").
H100_RUN = os.path.join(HERE, "results", "2026-11-26-h100-bdc3f72", "bench.json")


def run_script(name, *args):
    p = subprocess.run([sys.executable, os.path.join(HERE, name), *args], capture_output=True,
                       text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def table_rows(text):
    """The Markdown table's body rows as lists of cells."""
    out = []
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| goal |") and not line.startswith("| workload |"):
            out.append([c.strip() for c in line.strip().strip("|").split("|")])
    return out


class Tmp(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.dir.cleanup()

    def write(self, name, doc):
        path = os.path.join(self.dir.name, name)
        with open(path, "w") as f:
            json.dump(doc, f)
        return path


class Goals(Tmp):
    def test_a_real_runs_goals(self):
        rc, out, err = run_script("goals.py", H100_RUN)
        self.assertEqual(rc, 0, err)
        self.assertIn("NVIDIA H100", out)
        rows = {(r[0], r[1], r[2]): r for r in table_rows(out)}
        # The numbers bench/NOTES.md gives for that run.
        self.assertTrue(rows[("1 train", "4096x16384", "f32")][3].startswith("89.9%"))
        self.assertEqual(rows[("1 train", "4096x16384", "f32")][5], "yes")
        self.assertTrue(rows[("1 train", "4096x4096", "bf16")][3].startswith("67.8%"))
        self.assertEqual(rows[("1 train", "4096x4096", "bf16")][5], "no")
        self.assertTrue(rows[("2 scale", "4096x16384", "f32")][3].startswith("1.23 x one read"))
        self.assertTrue(rows[("5 backward", "4096x4096", "f32")][3].startswith("87.3%"))
        self.assertIn("1 launches", rows[("4 SN-GAN grouped", "sngan-cifar10", "bf16")][3])
        self.assertEqual(rows[("4 SN-GAN grouped", "sngan-cifar10", "bf16")][5], "yes")

    def test_the_path_is_named_beside_each_number(self):
        with open(H100_RUN) as f:
            doc = json.load(f)
        for r in doc["rows"]:
            r["path"] = "one-pass-rows" if r["mode"] != "backward" else "backward-kernels"
        rc, out, err = run_script("goals.py", self.write("b.json", doc))
        self.assertEqual(rc, 0, err)
        rows = {(r[0], r[1], r[2]): r for r in table_rows(out)}
        self.assertIn("one-pass-rows", rows[("1 train", "4096x4096", "f32")][3])
        self.assertIn("backward-kernels", rows[("5 backward", "4096x4096", "f32")][3])

    def test_the_goals_rows_are_the_default_algorithms_of_one_iteration_and_say_if_unchecked(self):
        with open(H100_RUN) as f:
            doc = json.load(f)
        rc, out, err = run_script("goals.py", H100_RUN)
        self.assertEqual(rc, 0, err)
        want = {(r[0], r[1], r[2]): r for r in table_rows(out)}[("1 train", "4096x4096", "f32")]
        self.assertNotIn("unchecked", want[3])
        # Rows of another algorithm (--algo all) or of more power iterations, after the default's:
        # not the goal's.
        extra = []
        for r in doc["rows"]:
            if (r["workload"], r["dtype"], r["mode"], r["impl"]) == ("4096x4096", "f32", "train", "specnorm"):
                for algo, iters in (("two-pass", 1), ("default", 2)):
                    x = copy.deepcopy(r)
                    x.update(algo=algo, power_iters=iters, copy_fraction=0.01, median_us=1e4)
                    extra.append(x)
        self.assertEqual(len(extra), 2)
        doc["rows"] += extra
        rc, out, err = run_script("goals.py", self.write("b.json", doc))
        self.assertEqual(rc, 0, err)
        self.assertEqual({(r[0], r[1], r[2]): r for r in table_rows(out)}[("1 train", "4096x4096", "f32")], want)
        # A run with --no-check: every number says so.
        for r in doc["rows"]:
            r["check"] = "skipped"
        rc, out, err = run_script("goals.py", self.write("c.json", doc))
        self.assertEqual(rc, 0, err)
        rows = {(r[0], r[1], r[2]): r for r in table_rows(out)}
        self.assertIn("unchecked", rows[("1 train", "4096x4096", "f32")][3])
        self.assertIn("unchecked", rows[("2 scale", "4096x16384", "f32")][3])

    def test_a_cpu_run_has_no_goal_and_no_error(self):
        if SN_BENCH is None:
            self.skipTest("no sn_bench given")
        js = os.path.join(self.dir.name, "cpu.json")
        p = subprocess.run([SN_BENCH, "--shape", "64x48", "--mode", "train", "--json", js],
                           capture_output=True, text=True, timeout=300)
        self.assertEqual(p.returncode, 0, p.stderr)
        rc, out, err = run_script("goals.py", js)
        self.assertEqual(rc, 0, err)
        self.assertEqual(table_rows(out), [])


class VariantsTable(Tmp):
    def two_runs(self, change):
        with open(H100_RUN) as f:
            a = json.load(f)
        for r in a["rows"]:
            r["path"] = "one-pass-rows"
        b = copy.deepcopy(a)
        change(b)
        return self.write("a.json", a), self.write("b.json", b)

    def test_a_differing_path_is_bracketed_and_only_there(self):
        def change(doc):
            for r in doc["rows"]:
                r["median_us"] *= 0.5
                if (r["workload"], r["dtype"], r["mode"], r["impl"]) == ("4096x4096", "f32", "train", "specnorm"):
                    r["path"] = "on-chip-grid"
        a, b = self.two_runs(change)
        rc, out, err = run_script("variants_table.py", f"default={a}", f"grid={b}")
        self.assertEqual(rc, 0, err)
        rows = table_rows(out)
        self.assertTrue(rows)
        bracketed = [r for r in rows if "[" in r[7]]
        self.assertEqual(len(bracketed), 1, out)
        self.assertEqual(bracketed[0][:6], ["4096x4096", "f32", "train", "specnorm", "default", "one-pass-rows"])
        self.assertIn("[on-chip-grid]", bracketed[0][7])
        self.assertIn("(-50%)", bracketed[0][7])
        # Only specnorm's rows, each with the first run's path.
        self.assertTrue(all(r[3].startswith("specnorm") and r[5] == "one-pass-rows" for r in rows))

    def test_a_missing_row_and_an_old_run_without_paths(self):
        def change(doc):
            doc["rows"] = [r for r in doc["rows"] if r["mode"] != "eval"]
            for r in doc["rows"]:
                del r["path"]
        a, b = self.two_runs(change)
        rc, out, err = run_script("variants_table.py", f"new={a}", f"old={b}")
        self.assertEqual(rc, 0, err)
        rows = table_rows(out)
        evals = [r for r in rows if r[2] == "eval"]
        self.assertTrue(evals)
        self.assertTrue(all(r[7] == "-" for r in evals))
        self.assertFalse(any("[" in r[7] for r in rows), "a run without paths is no differing path")

    def test_bad_arguments(self):
        rc, _, err = run_script("variants_table.py")
        self.assertEqual(rc, 2)
        rc, _, err = run_script("variants_table.py", "x=" + os.path.join(self.dir.name, "none.json"))
        self.assertEqual(rc, 1)
        self.assertIn("none.json", err)


class RowFormat(Tmp):
    def test_torch_baselines_rows_are_sn_benchs(self):
        """torch_baseline.py's CSV and JSON rows have sn_bench's fields in sn_bench's order (plot.py
        and the positional CSV readers take both)."""
        if SN_BENCH is None:
            self.skipTest("no sn_bench given")
        sys.path.insert(0, HERE)
        import torch_baseline  # noqa: E402 (imports torch only when run)
        js = os.path.join(self.dir.name, "cpu.json")
        cs = os.path.join(self.dir.name, "cpu.csv")
        p = subprocess.run([SN_BENCH, "--shape", "8x5", "--mode", "train", "--json", js, "--csv", cs],
                           capture_output=True, text=True, timeout=300)
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(js) as f:
            rows = json.load(f)["rows"]
        self.assertTrue(rows)
        self.assertEqual(list(rows[0].keys()), torch_baseline.ROW_FIELDS)
        with open(cs) as f:
            header = next(csv.reader(f))
        self.assertEqual(header, torch_baseline.ROW_FIELDS)
        self.assertEqual(header[-1], "path")


class OutputFiles(Tmp):
    """sn_bench's --json and --csv files: an unwritable path fails before anything is timed, and
    an existing file is not emptied by a run that never gets to write it."""

    def sn_bench(self, *args):
        if SN_BENCH is None:
            self.skipTest("no sn_bench given")
        return subprocess.run([SN_BENCH, *args], capture_output=True, text=True, timeout=300)

    def test_an_unwritable_path_fails_before_the_run(self):
        missing = os.path.join(self.dir.name, "no-such-dir", "x")
        for opt in ("--json", "--csv"):
            p = self.sn_bench("--shape", "64x48", "--mode", "train", opt, missing)
            self.assertEqual(p.returncode, 1, opt)
            self.assertIn(opt + " " + missing + ": cannot write", p.stderr)
            self.assertNotIn("64x48", p.stdout + p.stderr, opt + ": the workload ran before the check")

    def test_an_existing_file_survives_a_run_that_does_not_write_it(self):
        keep = {}
        for name in ("keep.json", "keep.csv"):
            keep[name] = os.path.join(self.dir.name, name)
            with open(keep[name], "w") as f:
                f.write("earlier results\n")
        js, cs = keep["keep.json"], keep["keep.csv"]
        p = self.sn_bench("--list-presets", "--json", js, "--csv", cs)
        self.assertEqual(p.returncode, 0, p.stderr)
        p = self.sn_bench("--shape", "8x8", "--torch", os.path.join(self.dir.name, "none.json"),
                          "--json", js, "--csv", cs)
        self.assertEqual(p.returncode, 1)
        for path in (js, cs):
            with open(path) as f:
                self.assertEqual(f.read(), "earlier results\n", path)
        # A new path's check leaves nothing behind when the run then fails.
        new = os.path.join(self.dir.name, "new.json")
        p = self.sn_bench("--shape", "8x8", "--torch", os.path.join(self.dir.name, "none.json"),
                          "--json", new)
        self.assertEqual(p.returncode, 1)
        self.assertFalse(os.path.exists(new))


if __name__ == "__main__":
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        SN_BENCH = sys.argv.pop(1)
    unittest.main(verbosity=2)
