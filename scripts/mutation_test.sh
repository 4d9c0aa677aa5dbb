#!/usr/bin/env bash
# mutation_test.sh: how many deliberate small bugs in the numerical core the tests catch.
#
#   pip install 'mutmut>=3.3,<4'                 # once; not part of the test extra
#   bash scripts/mutation_test.sh                # losses and optimizers (about 4 minutes)
#   bash scripts/mutation_test.sh act norm       # other modules, by the names below
#   bash scripts/mutation_test.sh all            # every module listed (hours on 2 cores)
#
# For each module, mutmut (https://mutmut.readthedocs.io) makes every small change
# it knows (an operator flipped, a constant moved by one, an argument dropped),
# runs the module's own test files against each, and counts the mutants no test
# kills. The run happens in a copy of the checkout in a temporary folder, so the
# working tree is never touched and other runs of the tests are not disturbed.
# Reports (score, and the diff of every surviving mutant) go to
# build/mutation/<module>.txt; docs/testing.md records the scores and why each
# surviving mutant that no test can kill changes nothing observable.
#
# Run it before changing a module of the numerical core, and after: a new
# survivor is either a test to write or an equivalent mutant to explain there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

# module name -> "source file|test files (space-separated)"
declare -A MODULES=(
    [losses]="cnndsl/training/losses.py|tests/training/test_losses.py"
    [optimizers]="cnndsl/training/optimizers.py|tests/training/test_optimizers.py"
    [act]="cnndsl/ops/act.py|tests/ops/test_ops_definition.py tests/ops/test_gradcheck.py tests/ops/test_ops_shapes.py tests/ops/test_ops_vs_torch.py"
    [norm]="cnndsl/ops/norm.py|tests/ops/test_ops_definition.py tests/ops/test_gradcheck.py tests/ops/test_ops_shapes.py tests/ops/test_ops_vs_torch.py tests/passes/test_fold.py"
    [pool]="cnndsl/ops/pool.py|tests/ops/test_ops_definition.py tests/ops/test_gradcheck.py tests/ops/test_ops_shapes.py tests/ops/test_ops_vs_torch.py"
    [conv]="cnndsl/ops/conv.py|tests/ops/test_ops_definition.py tests/ops/test_gradcheck.py tests/ops/test_ops_shapes.py tests/ops/test_ops_vs_torch.py tests/runtime/test_zeropad_fold.py"
    [window]="cnndsl/ops/window.py|tests/ops/test_ops_shapes.py tests/ops/test_ops_definition.py tests/passes/test_unread_pixels.py"
    [shapes]="cnndsl/passes/shapes.py|tests/passes/test_unread_pixels.py tests/passes/test_passes.py tests/passes/test_golden.py tests/ops/test_ops_shapes.py"
    [lower]="cnndsl/runtime/lower.py|tests/runtime/test_lower.py tests/runtime/test_fusion.py tests/runtime/test_zeropad_fold.py"
)
ORDER=(losses optimizers act norm pool conv window shapes lower)

if ! command -v mutmut >/dev/null 2>&1; then
    echo "mutmut is not installed: pip install 'mutmut>=3.3,<4'" >&2
    exit 2
fi
wanted=("$@")
if [ ${#wanted[@]} -eq 0 ]; then
    wanted=(losses optimizers)
elif [ "${wanted[0]}" = all ]; then
    wanted=("${ORDER[@]}")
fi
for name in "${wanted[@]}"; do
    if [ -z "${MODULES[$name]+x}" ]; then
        echo "unknown module '$name'; known: ${ORDER[*]} (or all)" >&2
        exit 2
    fi
done

copy_checkout() {
    # The checkout as git sees it (tracked and untracked files, not ignored ones);
    # outside a git checkout, everything but virtual environments and build output.
    if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        (cd "$root" && git ls-files -z --cached --others --exclude-standard \
            | tar --null --ignore-failed-read -cf - -T - 2>/dev/null) | tar -xf - -C "$1"
    else
        (cd "$root" && tar --exclude=./.venv --exclude=./.venv-ci --exclude=./build \
            --exclude=./mutants --exclude='*/__pycache__' --exclude=./.hypothesis -cf - .) \
            | tar -xf - -C "$1"
    fi
}

reports="$root/build/mutation"
mkdir -p "$reports"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for name in "${wanted[@]}"; do
    source_file="${MODULES[$name]%%|*}"
    tests="${MODULES[$name]#*|}"
    copy="$work/$name"
    mkdir -p "$copy"
    copy_checkout "$copy"
    {
        echo "[mutmut]"
        echo "source_paths = cnndsl"
        echo "only_mutate = $source_file"
        echo "also_copy ="
        for extra in grammars specs examples docs; do echo "    $extra"; done
        echo "pytest_add_cli_args = -p no:randomly -p no:cacheprovider -q"
        echo "pytest_add_cli_args_test_selection ="
        for t in $tests; do echo "    $t"; done
    } > "$copy/setup.cfg"
    echo "== $name: mutating $source_file against: $tests"
    start=$SECONDS
    (cd "$copy" && PYTHONPATH= mutmut run --max-children "${MUTMUT_CHILDREN:-2}" >"$copy/run.log" 2>&1) || {
        tail -20 "$copy/run.log" >&2
        echo "mutmut failed on $name (the log's end is above)" >&2
        exit 1
    }
    results="$(cd "$copy" && mutmut results --all true 2>/dev/null)"
    total=$(grep -c ': ' <<<"$results" || true)
    killed=$(grep -c ': killed' <<<"$results" || true)
    survived=$(grep -c ': survived' <<<"$results" || true)
    untested=$(grep -c ': no tests' <<<"$results" || true)
    timeouts=$(grep -c ': timeout' <<<"$results" || true)
    score="$name: $killed of $total mutants killed; $survived survived, $untested untested, $timeouts timed out ($((SECONDS - start)) s)"
    {
        echo "$score"
        echo
        for mutant in $(grep -E ': (survived|no tests)$' <<<"$results" | sed 's/:.*//'); do
            (cd "$copy" && mutmut show "$mutant" 2>/dev/null) | grep -E '^[-+][^-+]' | sed "s|^|$mutant  |"
        done
    } >"$reports/$name.txt"
    echo "$score"
    echo "   surviving mutants: $reports/$name.txt"
done
