"""Security: the network CA and its certificates (``certs``), who a certificate names
(``identity``), and mutual TLS for servers and channels with the guards that check callers
(``tls``). See docs/DECISIONS.md, "Security"."""
