# Sourced by tests/run-all.sh: named, timed steps. `step NAME` ends the step before it and
# starts NAME; the EXIT trap ends the last one (marked FAILED when the script exits on an
# error), prints a table of every step's time, then runs the script's `on_exit` function if
# it has one; also after a failure. Each step has its wall time and the CPU time (user +
# system, from `times`) of its commands: on a machine shared with other work, CPU time divided
# by the number of cores is about what the step takes on a machine of its own.
STEP_NAMES=()
STEP_WALL=()
STEP_CPU=()
STEP_NAME=""
STEP_START=0
STEP_CPU_START=0
RUN_START=$(date +%s)
TIMES_FILE=$(mktemp)
# Sets CPU_NOW to the CPU seconds used so far by this script's finished child processes
# (`times` in this shell: in a subshell, such as $(...), it would count only the subshell's).
CPU_NOW=0
children_cpu() {
    times >"$TIMES_FILE"
    # Second line: the children's user and system time, as "1m2.345s 0m0.678s".
    CPU_NOW=$(awk 'function sec(t) { split(t, p, /[ms]/); return p[1] * 60 + p[2] }
        NR == 2 { printf "%d\n", sec($1) + sec($2) + 0.5 }' "$TIMES_FILE")
}
end_step() {
    local status=$1
    [ -n "$STEP_NAME" ] || return 0
    children_cpu
    local wall=$(($(date +%s) - STEP_START)) cpu=$((CPU_NOW - STEP_CPU_START))
    STEP_NAMES+=("$STEP_NAME${status:+ ($status)}")
    STEP_WALL+=("$wall")
    STEP_CPU+=("$cpu")
    printf '<== %s: %d s (CPU %d s)%s\n' "$STEP_NAME" "$wall" "$cpu" "${status:+, $status}"
    STEP_NAME=""
}
step() {
    end_step ""
    STEP_NAME=$*
    STEP_START=$(date +%s)
    children_cpu
    STEP_CPU_START=$CPU_NOW
    printf '\n==> [%s] %s\n' "$(date -u +%H:%M:%S)" "$*"
}
summary() {
    local code=$?
    if [ "$code" -ne 0 ]; then end_step "FAILED, exit $code"; else end_step ""; fi
    printf '\nstep times, in seconds (wall, CPU):\n'
    local i
    for i in "${!STEP_NAMES[@]}"; do
        printf '%6d %6d  %s\n' "${STEP_WALL[$i]}" "${STEP_CPU[$i]}" "${STEP_NAMES[$i]}"
    done
    children_cpu
    printf '%6d %6d  total\n' "$(($(date +%s) - RUN_START))" "$CPU_NOW"
    if declare -F on_exit >/dev/null; then on_exit || true; fi
    rm -f "$TIMES_FILE"
    exit "$code"
}
trap summary EXIT
