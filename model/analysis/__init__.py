"""What a folk-rnn model's parameters mean: ``folkrnn analyze`` (pipeline/analyze.py) runs these parts.

common      settings, the numbers table, report sections, generating + validating tunes
timing      onset and position in the bar of every token (the validator's length rules)
parameters  singular values per layer and gate, gate norms, output bias, output correlations
tokens      token similarity in the input and output spaces, enharmonic pairs, pitch map
activations hidden and cell states over a tune, sparsity and magnitude
counting    P(bar line) against position in the bar, bar-period units (Fourier), ablation
nudging     output-bias nudges of a token or class against valid rate, form and length
copying     longest runs of tokens and bars shared with the training corpus
report      runs the parts, writes PNGs, numbers.parquet, report.md and report.html
"""
