#!/usr/bin/env python3
"""Mutation testing of the host code against the CPU test suite (no GPU needed).

Each mutant is one small change on one code line of host/*.c (a comparison turned, && for ||,
+ for -, 0 for 1, a ! dropped, a one-line statement deleted). The tests that run without a GPU are
rebuilt and run on it; a mutant they all pass is a survivor: either a behaviour no test pins, or
an equivalent change (a loop bound whose extra pass does nothing, a copy of a value already
there, code that only a GPU reaches). README, "What is checked", says what the last run found.

    scripts/mutants.py [--workdir DIR] [--sanitize] [FILE ...]     (default: every host/*.c)

It clones the repository's HEAD into DIR (default /tmp/specnorm-mutants; uncommitted changes are
not included; a clone left there by an earlier run is reset to HEAD), builds the test binaries
there (--sanitize: with ASan and UBSan, so that a mutant reading or writing out of bounds is
killed) and mutates only that clone. About 1 s a mutant on 2 cores without sanitizers, 5 s
with (a test binary that runs past 60 s counts as failed: a mutant that loops); prints each
survivor, then a line per file."""
import argparse
import os
import re
import subprocess
import sys
import time

TESTS = ['specnorm_cpu_tests', 'specnorm_conformance_tests', 'specnorm_thread_tests', 'specnorm_gpu_tests']
SAN = '-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer'

# (pattern, replacement) on the code part of a line (comments and string literals blanked)
OPS = [
    (r'(?<![<>=!])<=(?!=)', '<'), (r'(?<![<>=!])>=(?!=)', '>'),
    (r'(?<![<\-])<(?![<=])', '<='), (r'(?<![>\-])>(?![>=])', '>='),
    (r'==', '!='), (r'!=', '=='), (r'&&', '||'), (r'\|\|', '&&'),
    (r'(?<=[\w)\]]) \+ (?=[\w(])', ' - '), (r'(?<=[\w)\]]) - (?=[\w(])', ' + '),
    (r'(?<![\w.])0(?![\w.])', '1'), (r'(?<![\w.])1(?![\w.])', '0'),
    (r'!(?=[\w(])(?!=)', ''),
]
DECL = re.compile(r'^(return|const|int|int64_t|size_t|double|float|unsigned|uint\w*|sn_\w+_t|char|static|struct)\b')
STMT = re.compile(r'^[\w*\->\[\].]+(\s*[-+*|&]?=|\+\+|--|\()')


def code_lines(text):
    """The code part of each line: comments, string literals and preprocessor lines blanked."""
    out, in_block = [], False
    for line in text.split('\n'):
        code, j = '', 0
        while j < len(line):
            if in_block:
                k = line.find('*/', j)
                in_block, j = (k < 0), (len(line) if k < 0 else k + 2)
            elif line.startswith('/*', j):
                in_block, j = True, j + 2
            elif line.startswith('//', j):
                break
            elif line[j] == '"':
                k = j + 1
                while k < len(line) and line[k] != '"':
                    k += 2 if line[k] == '\\' else 1
                code += ' ' * (k + 1 - j)
                j = k + 1
            else:
                code += line[j]
                j += 1
        out.append('' if code.strip().startswith('#') else code)
    return out


def mutants(text):
    """(line index, description, new line) of every mutant of a file's text."""
    lines = text.split('\n')
    for i, code in enumerate(code_lines(text)):
        if not code.strip():
            continue
        for pat, rep in OPS:
            for m in re.finditer(pat, code):
                yield i, f'{m.group(0)!r}->{rep!r}@{m.start()}', lines[i][:m.start()] + rep + lines[i][m.end():]
        s = code.strip()
        if s.endswith(';') and (s.startswith('if (') or STMT.match(s)) and not DECL.match(s):
            yield i, 'delete', ''


def run(cmd, cwd, timeout, env=None):
    try:
        return subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        return 124


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--workdir', default='/tmp/specnorm-mutants')
    ap.add_argument('--sanitize', action='store_true')
    ap.add_argument('files', nargs='*')
    args = ap.parse_args()
    repo = subprocess.check_output(['git', 'rev-parse', '--show-toplevel'], text=True,
                                   cwd=os.path.dirname(os.path.abspath(__file__))).strip()
    wd = args.workdir
    if not os.path.isdir(os.path.join(wd, '.git')):
        subprocess.check_call(['git', 'clone', '-q', repo, wd])
    else:  # a clone from an earlier run: brought to the repository's HEAD
        subprocess.check_call(['git', '-C', wd, 'fetch', '-q', repo, 'HEAD'])
        subprocess.check_call(['git', '-C', wd, 'reset', '-q', '--hard', 'FETCH_HEAD'])
    flags = ['-DCMAKE_C_FLAGS=' + SAN, '-DCMAKE_CXX_FLAGS=' + SAN,
             '-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined'] if args.sanitize else []
    subprocess.check_call(['cmake', '-S', '.', '-B', 'build', '-G', 'Ninja', '-DSPECNORM_BUILD_BENCH=OFF',
                           '-DSPECNORM_BUILD_EXAMPLES=OFF', '-DCMAKE_CUDA_ARCHITECTURES=80-real'] + flags,
                          cwd=wd, stdout=subprocess.DEVNULL)
    build = ['ninja', '-C', 'build'] + TESTS
    subprocess.check_call(build, cwd=wd, stdout=subprocess.DEVNULL)
    env = dict(os.environ, ASAN_OPTIONS='halt_on_error=1:detect_leaks=1', UBSAN_OPTIONS='halt_on_error=1')
    for t in TESTS:  # the suite must pass unmutated
        if run([f'build/tests/{t}', '--gtest_brief=1'], wd, 600, env) != 0:
            sys.exit(f'{t} fails without a mutant: fix that first')
    files = args.files or sorted('host/' + f for f in os.listdir(os.path.join(wd, 'host')) if f.endswith('.c'))
    for path in files:
        full = os.path.join(wd, path)
        orig = open(full).read()
        lines = orig.split('\n')
        killed = survived = invalid = 0
        t0 = time.time()
        try:
            for i, what, new in mutants(orig):
                open(full, 'w').write('\n'.join(lines[:i] + [new] + lines[i + 1:]))
                if run(build, wd, 600) != 0:
                    invalid += 1
                elif any(run([f'build/tests/{t}', '--gtest_brief=1'], wd, 60, env) != 0 for t in TESTS):
                    killed += 1
                else:
                    survived += 1
                    print(f'SURVIVED {path}:{i + 1} {what}\n  - {lines[i].strip()}\n  + {new.strip()}', flush=True)
        finally:
            open(full, 'w').write(orig)
        print(f'{path}: {killed + survived + invalid} mutants, {killed} killed, {survived} survived, '
              f'{invalid} did not build, {time.time() - t0:.0f} s', flush=True)
    run(build, wd, 600)


if __name__ == '__main__':
    main()
