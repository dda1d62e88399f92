#!/usr/bin/env bash
# Runs every test program (C unit tests, Lua suites) and sums their "N passed, N failed" lines.
# A program that dies without a summary counts as one failure. Ends with the total line.
set -u
# Waiting OpenMP threads sleep instead of spinning: on a loaded 2-core machine spinning starves the
# threads doing work (test_conv: 9 s instead of 1.4 s).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
BUILD=${BUILD:-build}
MEDLUA=$BUILD/medlua
total_pass=0; total_fail=0
logdir=$BUILD/test-logs; mkdir -p "$logdir"
run_one() { # name, command...
  local name=$1; shift
  local log="$logdir/$name.log" start=$SECONDS
  mkdir -p "$(dirname "$log")"
  "$@" >"$log" 2>&1
  local rc=$?
  local line; line=$(grep -E '^([A-Za-z]+: )?[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
  local p=0 f=0
  if [ -n "$line" ]; then
    p=$(sed -E 's/^([A-Za-z]+: )?([0-9]+) passed, ([0-9]+) failed.*/\2/' <<<"$line")
    f=$(sed -E 's/^([A-Za-z]+: )?([0-9]+) passed, ([0-9]+) failed.*/\3/' <<<"$line")
  fi
  if [ -z "$line" ] || { [ $rc -ne 0 ] && [ "$f" = 0 ]; }; then f=$((f + 1)); echo "  $name: exited with status $rc without a clean summary"; fi
  total_pass=$((total_pass + p)); total_fail=$((total_fail + f))
  printf '%-32s %4d passed, %3d failed  (%ds)\n' "$name" "$p" "$f" $((SECONDS - start))
  if [ "$f" != 0 ]; then grep -E '^(FAIL|     )' "$log" | head -n 20 | sed 's/^/    /'; tail -n 5 "$log" | sed 's/^/    | /'; fi
}
for t in "$BUILD"/tests/test_*; do
  [ -x "$t" ] || continue
  run_one "c/$(basename "$t")" "$t"
done
for t in tests/lua/test_*.lua; do
  [ -f "$t" ] || continue
  run_one "lua/$(basename "$t" .lua)" "$MEDLUA" "$t"
done
# the CUDA kernels' shared host+device code checked on the host (built when nvcc is there)
[ -x "$BUILD/tests/gpu_host_check" ] && run_one "gpu-host/host_check" "$BUILD/tests/gpu_host_check"
# tests/gpu: on the host-emulated device always (the device paths above the kernels), and on a real GPU
# when the program finds one (the kernels themselves, against the CPU)
if [ -x "$BUILD/medlua-fakecuda" ]; then
  for t in tests/gpu/test_*.lua; do
    [ -f "$t" ] && run_one "gpu-emulated/$(basename "$t" .lua)" "$BUILD/medlua-fakecuda" "$t"
  done
fi
if "$MEDLUA" -e 'os.exit(medlua.cuda.available() and 0 or 1)' >/dev/null 2>&1; then
  for t in tests/gpu/test_*.lua; do
    [ -f "$t" ] && run_one "gpu/$(basename "$t" .lua)" "$MEDLUA" "$t"
  done
else
  echo "gpu tests: skipped ($("$MEDLUA" -e 'io.write(medlua.cuda.status())' 2>/dev/null || echo "no GPU on this machine"))"
fi
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" = 0 ]
