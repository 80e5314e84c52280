"""`vitdeploy info` against published params and MACs (DeiT paper, Table 1): the counter includes the attention
matmuls through torch's FlopCounterMode. Writes results/reference_figures.json."""
from vitdeploy.models import count_macs, count_params, load_model

from common import write_result

PUBLISHED = {  # name: (params M, MACs G) as published
    "deit_tiny_patch16_224": (5.7, 1.3),
    "deit_small_patch16_224": (22.1, 4.6),
    "deit_base_patch16_224": (86.6, 17.6),
}

rows = []
for name, (p_pub, m_pub) in PUBLISHED.items():
    loaded = load_model(name)
    params, macs = count_params(loaded.model), count_macs(loaded.model, loaded.input_size)
    rows.append({"model": name, "params_m": round(params / 1e6, 3), "macs_g": round(macs / 1e9, 3),
                 "published_params_m": p_pub, "published_macs_g": m_pub,
                 "agrees": abs(params / 1e6 - p_pub) <= 0.05 and abs(macs / 1e9 - m_pub) <= 0.05})
write_result("reference_figures", {"rows": rows})
