#!/bin/sh
# Fills fuzz/corpus/<target>/ with seeds. fuzz/corpus is not committed (.gitignore):
# run this once before fuzzing, or again after deleting the corpus.
#
# The SMTP client transcripts come from the ProFuzzBench seeds (Apache-2.0, see their
# README.md) under ../shared/testdata/profuzzbench-smtp relative to the repository
# root; set SEEDS=/path/to/profuzzbench-smtp to use another copy. The few extra seeds
# written inline below are this project's own.
#
#   command_parser  one file per transcript line, CRLF removed (Command::parse takes a
#                   line without its CRLF), plus some extra command lines
#   server_session  each transcript as is, and prefixed with \000\000 (the target's
#                   layout: flags = accept every event, no chunk sizes = one piece)
#   reply_parser    a few server replies, prefixed with \000\000
#   data_decoder    the DATA part of a transcript and some bodies, prefixed with \000\000
set -eu

fuzz_dir=$(cd "$(dirname "$0")" && pwd)
repo_root=$(dirname "$fuzz_dir")
seeds=${SEEDS:-$repo_root/../shared/testdata/profuzzbench-smtp}
transcripts=$seeds/in-smtp
corpus=$fuzz_dir/corpus

if [ ! -d "$transcripts" ]; then
    echo "seed.sh: no transcripts in $transcripts (set SEEDS=...)" >&2
    exit 1
fi

mkdir -p "$corpus/command_parser" "$corpus/server_session" \
    "$corpus/reply_parser" "$corpus/data_decoder"

# header FILE: the two-byte \000\000 header of the split layout (fuzz/common/split.rs).
header() { printf '\000\000' > "$1"; }

for f in "$transcripts"/*.raw; do
    name=$(basename "$f" .raw)

    # server_session: the transcript, raw and with the header.
    cp "$f" "$corpus/server_session/$name"
    header "$corpus/server_session/$name.split"
    cat "$f" >> "$corpus/server_session/$name.split"

    # command_parser: one line per file, without CRLF.
    i=0
    tr -d '\r' < "$f" | while IFS= read -r line || [ -n "$line" ]; do
        i=$((i + 1))
        printf '%s' "$line" > "$corpus/command_parser/$name.line$i"
    done
done

# command_parser: commands the transcripts lack.
i=0
while IFS= read -r line; do
    i=$((i + 1))
    printf '%s' "$line" > "$corpus/command_parser/extra$i"
done <<'EOF'
HELO [192.0.2.1]
EHLO [IPv6:2001:db8::1]
LHLO lmtp.example.test
MAIL FROM:<> SIZE=1000 BODY=8BITMIME
MAIL FROM:<@a.test,@b.test:user@d.test> RET=HDRS ENVID=QQ+2B1 SMTPUTF8 REQUIRETLS
MAIL FROM:<"quoted local"@example.test> AUTH=<> MT-PRIORITY=-3
RCPT TO:<Postmaster> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;user@example.test
RCPT TO:<user@[192.0.2.1]> NOTIFY=NEVER
BDAT 1000 LAST
VRFY Smith
EXPN staff
HELP DATA
NOOP anything
STARTTLS
AUTH PLAIN AGFsaWNlAHNlY3JldA==
AUTH LOGIN
AUTH PLAIN =
RSET
EOF

# server_session: STARTTLS, AUTH and BDAT sessions (with the header).
write_session() {
    header "$corpus/server_session/$1"
    printf '%b' "$2" >> "$corpus/server_session/$1"
}
write_session starttls_auth 'EHLO a.test\r\nSTARTTLS\r\nEHLO a.test\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nMAIL FROM:<a@a.test> SIZE=10\r\nRCPT TO:<b@b.test> NOTIFY=NEVER\r\nDATA\r\n..x\r\n.\r\nQUIT\r\n'
write_session auth_login 'EHLO a.test\r\nAUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\nMAIL FROM:<>\r\nRCPT TO:<Postmaster>\r\nBDAT 5\r\nhelloBDAT 0 LAST\r\nQUIT\r\n'

# reply_parser: server replies.
write_reply() {
    header "$corpus/reply_parser/$1"
    printf '%b' "$2" >> "$corpus/reply_parser/$1"
}
write_reply greeting '220 mx.example.test ESMTP\r\n'
write_reply ehlo '250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250-CHUNKING\r\n250 DSN\r\n'
write_reply transaction '250 2.1.0 Sender OK\r\n550 5.1.1 No such user\r\n354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Message accepted\r\n221 2.0.0 Bye\r\n'
write_reply multiline_status '550-5.7.1 line one\r\n550-5.7.1 line two\r\n550 5.7.1 end\r\n334 VXNlcm5hbWU6\r\n334\r\n'

# data_decoder: message content (with the header).
write_data() {
    header "$corpus/data_decoder/$1"
    printf '%b' "$2" >> "$corpus/data_decoder/$1"
}
write_data transcript 'abc\r\n.\r\nQUIT\r\n'
write_data stuffed 'Subject: x\r\n\r\n..leading\r\n..\r\nlast line.\r\n.\r\nNOOP\r\n'
write_data smuggling 'Subject: t\r\n\r\nfirst\n.\nMAIL FROM:<x@y>\r\n\r.\r\nstill body\r\n.\r\n'

for t in command_parser server_session reply_parser data_decoder; do
    echo "$t: $(ls "$corpus/$t" | wc -l) seeds in $corpus/$t"
done
