"""Analysis runs and their store: the config, writing and reading runs, derived results and background jobs, and the pipelines that make runs (analyze, import, Ray, synthetic)."""
