"""Plots and the Pareto analysis they draw, usable by any stage. Import the submodules (`viz.plots`,
`viz.pareto`) directly; nothing here loads matplotlib until a plot is drawn."""
