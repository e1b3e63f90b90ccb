"""Survey-derived baselines for specialising a small LLM (SmolLM2-135M): the domain-specialization access
ladder, retrieval-based generation as a kNN-LM, and (planned) KG fusion and personalization."""
