"""`python studies/data/make_mini_text.py studies/data` writes mini_train.txt and mini_held.txt: documents in the style of zoo "mini"'s training
corpus (stdlib/zoo/corpus.py), drawn with two seeds; the held-out file keeps only documents that are
not in the training file. One document per paragraph."""
import sys
from pathlib import Path
from mechstudy.stdlib.zoo.corpus import mini_documents
out = Path(sys.argv[1])
train = [d.strip() for d in mini_documents(11000, seed=1001)[:11000]]
seen = set(train)
held = list(dict.fromkeys(d.strip() for d in mini_documents(3000, seed=2002)[:3000] if d.strip() not in seen))[:1500]
(out / "mini_train.txt").write_text("\n\n".join(d.strip() for d in train) + "\n")
(out / "mini_held.txt").write_text("\n\n".join(d.strip() for d in held) + "\n")
print(len(train), len(held))
