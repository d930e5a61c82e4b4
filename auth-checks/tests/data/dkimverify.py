# dkimpy's dkimverify, unchanged, with its DNS lookups sent to a test server on
# 127.0.0.1:<port>. Usage: python3 dkimverify.py PORT < message
# Exit status 0 and "signature ok" on stdout mean the first signature verified.
import logging
import sys

import dns.resolver

resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers = ["127.0.0.1"]
resolver.port = int(sys.argv[1])
dns.resolver.default_resolver = resolver
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)

from dkim import dkimverify

sys.argv = ["dkimverify"]
dkimverify.main()
