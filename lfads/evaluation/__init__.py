"""Results of trained models: posterior sampling (rule `infer`), nlb_tools scores (`evaluate`),
the table of runs (`aggregate`), figures (`figures`) and EvalAI submissions (`submission`).
"""
