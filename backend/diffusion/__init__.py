"""Everything that runs the diffusion model: loading, tokenizer, sampler, hooks at sites, steering, collection."""
