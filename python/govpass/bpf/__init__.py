"""eBPF for govpass: a tiny assembler, the bpf(2) calls, and the kernel pre-filter
program that lets the iptables rules queue ClientHellos without conntrack."""
