"""roundtable's benchmarks: `benchmarks/run` measures hops, turns, throughput, streaming and
start-up across real processes, prints a table and writes JSON and plots."""
