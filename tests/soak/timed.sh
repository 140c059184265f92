#!/usr/bin/env bash
# Compiler launcher of build_sanitized.sh when REDIR_SANITIZED_TIMES is set:
# appends "<cpu s> <peak RSS KiB> <output>" of one compile to that file.
[[ -n ${REDIR_SANITIZED_TIMES:-} ]] || exec "$@"
out=unknown
for ((i = 1; i < $#; i++)); do [[ ${!i} == -o ]] && { j=$((i + 1)); out=${!j}; }; done
exec /usr/bin/time -a -o "$REDIR_SANITIZED_TIMES" -f "%U+%S s cpu %M KiB $out" "$@"
