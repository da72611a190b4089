"""Training Kronos on your own bars: the tokenizer's and the predictor's objectives (``objectives``)."""
