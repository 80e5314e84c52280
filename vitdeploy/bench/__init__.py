"""The last stage: profile (latency, throughput, op profiles, leak checks), eval (accuracy and agreement) and
report. Imported only by the CLI and the Python API; the runners it drives live in `vitdeploy.runtime`.

Import the submodules (`bench.latency`, `bench.accuracy`, `bench.report`, `bench.artifacts`) directly: this
package imports nothing on its own."""
