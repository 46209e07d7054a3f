# Process helpers shared by up.sh and down.sh (sourced, not run).

# alive PID: true while PID runs. A zombie counts as dead: orphans may never be reaped in a
# container, and waiting on them would only burn the grace period.
alive() {
  local s
  s=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ $s != Z* ]]
}
