# What study.sbatch and study_array.sbatch share: run a command that a signal stops at a safe point,
# then requeue the job, or end it, by what the command did. Sourced from the project folder
# ($SLURM_SUBMIT_DIR: SLURM runs a copy of the batch script, not the file in deploy/slurm).
# Needs VENV, and sets STATUS.
EXIT_REQUEUE=75
MAX_STALLED=${TFF_REQUEUES_WITHOUT_PROGRESS:-1}

say() { echo "${SCRIPT_NAME:-study.sbatch} (job $SLURM_JOB_ID, start $((${SLURM_RESTART_COUNT:-0} + 1))): $*"; }

job_field() {  # A field of this job as the controller sees it now (JobState, Restarts, ...).
  scontrol show job -o "$SLURM_JOB_ID" | grep -o " $1=[^ ]*" | cut -d= -f2
}

rounds_done() {  # The saved rounds of the run in folder $1 (0 before its first).
  "$VENV/bin/tff-resume" status "$1" --json 2>/dev/null \
    | "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["rounds_done"])' \
    2>/dev/null || echo 0
}

# Runs "$@" in the background and waits for its exit, in STATUS. `wait` returns when a signal
# arrives, so the trap runs at once; then it waits again. The time limit's signal (--signal=B:)
# reaches this script alone: it is passed on. A preemption or `scancel` signals every process of the
# job (the job is no longer RUNNING): the command has it already, and a second SIGTERM would stop it at
# once rather than after the round in progress.
run_stoppable() {
  "$@" &
  local child=$!
  trap 'if [ "$(job_field JobState)" = RUNNING ]; then kill -TERM '"$child"' 2>/dev/null; fi' TERM INT
  wait "$child"
  STATUS=$?
  while kill -0 "$child" 2>/dev/null; do
    wait "$child"
    STATUS=$?
  done
  trap - TERM INT
}

# Stops a job step started in the background (its srun's PID in $1): SIGTERM, then SIGKILL after
# TFF_STEP_STOP_SECONDS (default 10). With a node lost, srun waits for the tasks there much longer
# (it cannot reach them); the script must decide and requeue before SLURM notices the node is down.
stop_step() {
  local step=$1 waited=0
  kill -TERM "$step" 2>/dev/null
  while kill -0 "$step" 2>/dev/null && [ "$waited" -lt "${TFF_STEP_STOP_SECONDS:-10}" ]; do
    sleep 1
    waited=$((waited + 1))
  done
  kill -KILL "$step" 2>/dev/null
  wait "$step" 2>/dev/null
}

# Ends the script: requeues the job when the command stopped with 75 (a signal, a lost worker) and
# the run made progress, or SLURM is not requeueing it itself; a start that saved no new round is
# requeued at most MAX_STALLED times in a row. $1: the run's folder; $2: its rounds before the start;
# $3: the file that counts starts without progress.
requeue_or_end() {
  local run_dir=$1 before=$2 stalled_file=$3 after stalled=0 state
  if [ "$STATUS" -ne "$EXIT_REQUEUE" ]; then
    rm -f "$stalled_file"
    say "the runner exited with $STATUS: not requeued"
    exit "$STATUS"
  fi
  after=$(rounds_done "$run_dir")
  if [ "$after" -le "$before" ]; then
    stalled=$(( $(cat "$stalled_file" 2>/dev/null || echo 0) + 1 ))
  fi
  state=$(job_field JobState)
  if [ "$(job_field Restarts)" -gt "${SLURM_RESTART_COUNT:-0}" ]; then
    # SLURM is requeueing the job itself (a preemption, `scontrol requeue`).
    echo "$stalled" > "$stalled_file"
    say "stopped after round $after (saved, $((after - before)) new) as SLURM requeues the job"
  elif [ "$state" != RUNNING ]; then
    rm -f "$stalled_file"
    say "cancelled ($state) after round $after (saved): not requeued; submit the same command" \
      "again to resume"
  elif [ "$stalled" -gt "$MAX_STALLED" ]; then
    rm -f "$stalled_file"
    say "no new round saved in $stalled starts in a row (still $after rounds): not requeued" \
      "again; the runner's last line above says why (TFF_REQUEUES_WITHOUT_PROGRESS=$MAX_STALLED)"
  else
    echo "$stalled" > "$stalled_file"
    say "stopped after round $after (saved, $((after - before)) new): requeued"
    scontrol requeue "$SLURM_JOB_ID"
  fi
  exit "$STATUS"
}
