"""Writes instructions.jsonl: a small, deterministic instruction dataset for `./build.sh demo`.
Tasks with simple, learnable patterns (arithmetic, capitals, opposites, uppercase, word counts)
in three shapes the reader accepts (Alpaca, messages, ShareGPT). Regenerate:
    python3 data/demo/make_demo_data.py > data/demo/instructions.jsonl
"""
import json, random

rng = random.Random(1234)
capitals = {"France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
            "Austria": "Vienna", "Poland": "Warsaw", "Greece": "Athens", "Sweden": "Stockholm", "Norway": "Oslo",
            "Finland": "Helsinki", "Denmark": "Copenhagen", "Ireland": "Dublin", "Belgium": "Brussels",
            "Netherlands": "Amsterdam", "Hungary": "Budapest", "Japan": "Tokyo", "China": "Beijing",
            "India": "New Delhi", "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Chile": "Santiago",
            "Canada": "Ottawa", "Mexico": "Mexico City", "Brazil": "Brasília", "Argentina": "Buenos Aires",
            "Australia": "Canberra", "Turkey": "Ankara", "Russia": "Moscow"}
opposites = {"hot": "cold", "big": "small", "fast": "slow", "up": "down", "happy": "sad", "light": "dark",
             "early": "late", "open": "closed", "full": "empty", "strong": "weak", "old": "new", "high": "low",
             "wet": "dry", "loud": "quiet", "rich": "poor", "hard": "soft", "near": "far", "first": "last"}
words = ["apple", "river", "mountain", "garden", "window", "music", "yellow", "planet", "silver", "forest",
         "coffee", "bridge", "winter", "summer", "candle", "dragon", "pencil", "rocket", "island", "castle"]

rows = []
for a in range(0, 13):
    for b in range(0, 13):
        if rng.random() < 0.55:
            rows.append(("What is {} + {}?".format(a, b), "{} + {} = {}.".format(a, b, a + b)))
for country, city in capitals.items():
    rows.append(("What is the capital of {}?".format(country), "The capital of {} is {}.".format(country, city)))
    rows.append(("Name the capital city of {}.".format(country), "{} is the capital of {}.".format(city, country)))
for w, o in opposites.items():
    rows.append(("What is the opposite of \"{}\"?".format(w), "The opposite of \"{}\" is \"{}\".".format(w, o)))
    rows.append(("What is the opposite of \"{}\"?".format(o), "The opposite of \"{}\" is \"{}\".".format(o, w)))
for w in words:
    rows.append(("Write \"{}\" in capital letters.".format(w), w.upper()))
    rows.append(("How many letters are in the word \"{}\"?".format(w), "The word \"{}\" has {} letters.".format(w, len(w))))
rng.shuffle(rows)

system = "You are a concise assistant."
for i, (q, a) in enumerate(rows):
    shape = i % 3
    if shape == 0:
        row = {"instruction": q, "input": "", "output": a}
    elif shape == 1:
        row = {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    else:
        row = {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
    print(json.dumps(row, ensure_ascii=False))
