"""Write the bundled out-of-domain evaluation sets (data/ood/) and the base model's drift references.

Every question, instruction and constraint below was written by the psft-lightning project (CC0-1.0).
Multiple-choice distractors come from the same table as the answer, placed by a seeded shuffle, so
the same arguments always give byte-identical files. With ``--references`` the base model's greedy
answers to the drift instructions are generated (a few minutes on a CPU for the embedded model).

    python scripts/make_ood_data.py                         # the three question files
    python scripts/make_ood_data.py --references smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random

from ood_hard_items import hard_items

HARD_PER_KIND = 12  # 9 kinds: 108 computed items beside the 100 recalled ones

CAPITALS = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Germany", "Berlin"),
    ("Spain", "Madrid"),
    ("Egypt", "Cairo"),
    ("Canada", "Ottawa"),
    ("Australia", "Canberra"),
    ("Russia", "Moscow"),
    ("China", "Beijing"),
    ("India", "New Delhi"),
    ("Brazil", "Brasília"),
    ("Kenya", "Nairobi"),
    ("Mexico", "Mexico City"),
    ("Norway", "Oslo"),
    ("Greece", "Athens"),
    ("Portugal", "Lisbon"),
    ("Ireland", "Dublin"),
    ("Argentina", "Buenos Aires"),
    ("Thailand", "Bangkok"),
    ("Sweden", "Stockholm"),
    ("Poland", "Warsaw"),
    ("Turkey", "Ankara"),
    ("Peru", "Lima"),
    ("Austria", "Vienna"),
]
SYMBOLS = [
    ("oxygen", "O"),
    ("hydrogen", "H"),
    ("carbon", "C"),
    ("nitrogen", "N"),
    ("sodium", "Na"),
    ("iron", "Fe"),
    ("gold", "Au"),
    ("silver", "Ag"),
    ("potassium", "K"),
    ("calcium", "Ca"),
    ("helium", "He"),
    ("copper", "Cu"),
    ("lead", "Pb"),
    ("zinc", "Zn"),
    ("chlorine", "Cl"),
]
OPPOSITES = [
    ("hot", "cold"),
    ("tall", "short"),
    ("early", "late"),
    ("full", "empty"),
    ("heavy", "light"),
    ("happy", "sad"),
    ("open", "closed"),
    ("fast", "slow"),
    ("strong", "weak"),
    ("rich", "poor"),
    ("wet", "dry"),
    ("loud", "quiet"),
    ("ancient", "modern"),
    ("begin", "end"),
    ("accept", "refuse"),
]
# (question, answer, three wrong options)
FACTS = [
    ("How many legs does a spider have?", "8", ["6", "4", "10"]),
    ("How many days are in a leap year?", "366", ["365", "364", "360"]),
    ("Which planet is known as the Red Planet?", "Mars", ["Venus", "Jupiter", "Saturn"]),
    ("What is the largest planet in the Solar System?", "Jupiter", ["Earth", "Mars", "Neptune"]),
    (
        "What gas do plants take in from the air to make food?",
        "carbon dioxide",
        ["oxygen", "helium", "nitrogen"],
    ),
    ("At what temperature in degrees Celsius does water boil at sea level?", "100", ["50", "0", "212"]),
    ("At what temperature in degrees Celsius does water freeze?", "0", ["10", "-10", "32"]),
    ("How many continents are there on Earth?", "7", ["5", "6", "9"]),
    (
        "Which organ pumps blood through the human body?",
        "the heart",
        ["the lungs", "the liver", "the stomach"],
    ),
    (
        "What is the largest ocean on Earth?",
        "the Pacific Ocean",
        ["the Atlantic Ocean", "the Indian Ocean", "the Arctic Ocean"],
    ),
    ("How many sides does a hexagon have?", "6", ["5", "7", "8"]),
    ("How many minutes are in an hour?", "60", ["100", "30", "24"]),
    (
        "Which animal is known as the king of the jungle?",
        "the lion",
        ["the elephant", "the zebra", "the mouse"],
    ),
    ("What do bees make?", "honey", ["milk", "silk", "wool"]),
    ("Which star is at the centre of our Solar System?", "the Sun", ["the Moon", "Polaris", "Sirius"]),
    ("What is frozen water called?", "ice", ["steam", "sand", "glass"]),
    ("How many hours are in a day?", "24", ["12", "20", "48"]),
    ("Which is the closest planet to the Sun?", "Mercury", ["Earth", "Mars", "Uranus"]),
    ("What colour do you get by mixing blue and yellow?", "green", ["purple", "orange", "red"]),
    ("How many months are in a year?", "12", ["10", "11", "13"]),
    ("Which animal lays eggs?", "a chicken", ["a cow", "a dog", "a horse"]),
    ("What is the opposite of north?", "south", ["east", "west", "up"]),
    ("What force pulls objects toward the Earth?", "gravity", ["magnetism", "friction", "wind"]),
    ("Which instrument has black and white keys?", "the piano", ["the drum", "the flute", "the violin"]),
    ("What is the main language spoken in Brazil?", "Portuguese", ["Spanish", "French", "English"]),
    (
        "Who wrote the play Romeo and Juliet?",
        "William Shakespeare",
        ["Charles Dickens", "Jane Austen", "Mark Twain"],
    ),
    ("What is the square root of 81?", "9", ["8", "7", "18"]),
    ("How many weeks are in a year?", "52", ["48", "50", "56"]),
    (
        "Which part of the plant makes food using sunlight?",
        "the leaf",
        ["the root", "the flower", "the seed"],
    ),
    ("What is the hardest natural substance?", "diamond", ["gold", "iron", "quartz"]),
    ("Which bird is a symbol of peace?", "the dove", ["the crow", "the eagle", "the owl"]),
    ("How many players are on a football (soccer) team on the field?", "11", ["9", "10", "12"]),
    ("Which sense do we use our ears for?", "hearing", ["smell", "taste", "sight"]),
    ("What is the tallest animal in the world?", "the giraffe", ["the elephant", "the horse", "the camel"]),
    ("How many strings does a standard guitar have?", "6", ["4", "5", "8"]),
]


def multiple_choice(rng: random.Random) -> list[dict]:
    """208 four-option questions, recalled and computed ones in a seeded order (so any first N mix
    both), the answer at a seeded position."""
    questions = []

    def add(question: str, answer: str, wrong: list[str]) -> None:
        options = [answer, *wrong]
        rng.shuffle(options)
        questions.append({"question": question, "choices": options, "answer": options.index(answer)})

    for country, capital in CAPITALS:
        add(
            f"What is the capital of {country}?",
            capital,
            rng.sample([c for _, c in CAPITALS if c != capital], 3),
        )
    for element, symbol in SYMBOLS:
        others = [s for _, s in SYMBOLS if s != symbol]
        add(f"What is the chemical symbol of {element}?", symbol, rng.sample(others, 3))
    for word, opposite in OPPOSITES:
        others = [o for _, o in OPPOSITES if o != opposite]
        add(f"Which word means the opposite of '{word}'?", opposite, rng.sample(others, 3))
    for question, answer, wrong in FACTS:
        add(question, answer, wrong)
    for a, b in [(7, 8), (12, 12), (9, 6), (15, 4), (25, 3), (11, 11), (6, 7), (13, 5), (8, 9), (14, 3)]:
        product = a * b
        add(
            f"What is {a} times {b}?",
            str(product),
            [str(product + d) for d in rng.sample([-2, -1, 1, 2, 10], 3)],
        )
    for question, answer, wrong in hard_items(rng, HARD_PER_KIND):
        add(question, answer, wrong)
    rng.shuffle(questions)
    return questions


INSTRUCTIONS = [
    "Explain why the sky is blue in two sentences.",
    "Write a short poem about the sea.",
    "Give three tips for getting better sleep.",
    "What is the difference between weather and climate?",
    "Describe a cat to someone who has never seen one.",
    "Write a polite email asking a colleague for a meeting next week.",
    "Summarize the story of Cinderella in a few sentences.",
    "What are the benefits of drinking water?",
    "Suggest a name for a new coffee shop and explain why.",
    "How do I make a cup of tea?",
    "Explain what a computer program is to a child.",
    "List some fun things to do on a rainy day.",
    "Why do leaves change colour in autumn?",
    "Write a thank-you note to a teacher.",
    "What is photosynthesis?",
    "Give me a recipe for a simple salad.",
    "Describe the city you would most like to visit and why.",
    "What should I pack for a weekend camping trip?",
    "Explain how a bicycle works.",
    "Write a short story about a dragon who is afraid of the dark.",
    "What are good habits for studying?",
    "Why is exercise important?",
    "Explain the rules of tic-tac-toe.",
    "Describe your ideal breakfast.",
    "What is the internet?",
    "Give advice to someone starting their first job.",
    "Write a haiku about winter.",
    "How do birds fly?",
    "Explain why we have seasons.",
    "What makes a good friend?",
    "Describe how to plant a tree.",
    "Write a short motivational message for a student before an exam.",
    "Explain how a refrigerator keeps food cold.",
    "Write a limerick about a forgetful cat.",
    "What is the difference between a virus and a bacterium?",
    "Give five ideas for a birthday present for a grandmother.",
    "Describe the taste of a lemon to someone who has never had one.",
    "Explain what a budget is and why it helps.",
    "Write a short dialogue between a customer and a baker.",
    "How does a rainbow form?",
    "What are the main parts of a flower?",
    "Give tips for learning a new language.",
    "Explain why the Moon has phases.",
    "Write a product description for a reusable water bottle.",
    "What should someone do if they feel stressed at work?",
    "Describe a busy market in the morning.",
    "Explain the difference between a noun and a verb.",
    "How can I save energy at home?",
    "Write a short apology message for missing a friend's party.",
    "What is a volcano and why does it erupt?",
    "Explain how to tie a shoelace.",
    "Give three reasons why people keep pets.",
    "Describe what happens when you boil an egg.",
    "Write the opening paragraph of a mystery story.",
    "What is recycling and why does it matter?",
    "Explain how a library works.",
    "Suggest a weekly plan for someone who wants to start running.",
    "What are clouds made of?",
    "Write a short speech for a friend's wedding.",
    "Explain what fractions are with an example.",
    "Describe the sounds you might hear in a forest at night.",
    "How do you introduce yourself at a job interview?",
    "Explain why it is dark at night.",
    "Write a short review of a film you imagine seeing.",
]

IF_PROBE = [
    ("List three fruits. Answer with exactly 3 bullet points using '* '.", [("bullet_count", 3)]),
    ("Name four colours. Use exactly 4 markdown bullet points.", [("bullet_count", 4)]),
    ("Give two reasons to read books, as exactly 2 bullet points starting with '- '.", [("bullet_count", 2)]),
    ("Describe the moon. Write your whole answer in lowercase letters only.", [("lowercase", None)]),
    ("what is your favourite season? reply in all lowercase letters, no capitals.", [("lowercase", None)]),
    ("Say hello to the world. Write your entire answer in capital letters.", [("uppercase", None)]),
    ("Describe a forest. Your answer must include the word 'green'.", [("includes", "green")]),
    ("Write one sentence about the ocean that includes the word 'blue'.", [("includes", "blue")]),
    ("Tell me about dogs without using the word 'bark'.", [("excludes", "bark")]),
    ("What is a rainbow? Answer in at most 20 words.", [("max_words", 20)]),
    ("Describe the sun in fewer than 15 words.", [("max_words", 15)]),
    ("What is rain? Answer in no more than 25 words.", [("max_words", 25)]),
    (
        "Write a short note about coffee. End your answer with the exact phrase 'Have a nice day.'",
        [("ends_with", "Have a nice day.")],
    ),
    ("Give a fact about trees. End your response with 'That is all.'", [("ends_with", "That is all.")]),
    ("Describe a city. Start your answer with the word 'Yes'.", [("starts_with", "Yes")]),
    ("Write a sentence about mountains without using any commas.", [("no_comma", None)]),
    ("Describe your morning routine without using any commas.", [("no_comma", None)]),
    (
        'Give a person\'s name and age as JSON, like {"name": ..., "age": ...}. Output only JSON.',
        [("json", None)],
    ),
    (
        "Return a JSON object with a key 'colour' and a value naming a colour. Output only the JSON.",
        [("json", None)],
    ),
    (
        "List two animals as exactly 2 bullet points, all in lowercase.",
        [("bullet_count", 2), ("lowercase", None)],
    ),
    (
        "Describe snow in at most 30 words and include the word 'white'.",
        [("max_words", 30), ("includes", "white")],
    ),
    (
        "Name three planets as exactly 3 bullet points and include the word 'Mars'.",
        [("bullet_count", 3), ("includes", "Mars")],
    ),
    (
        "Write about music in lowercase letters and do not use any commas.",
        [("lowercase", None), ("no_comma", None)],
    ),
    (
        "Describe a river in at most 40 words. End your answer with 'The end.'",
        [("max_words", 40), ("ends_with", "The end.")],
    ),
    ("Name five vegetables as exactly 5 bullet points.", [("bullet_count", 5)]),
    ("Give one tip for saving money, as exactly 1 bullet point.", [("bullet_count", 1)]),
    ("List three sports using exactly 3 bullet points that start with '* '.", [("bullet_count", 3)]),
    ("Explain what a clock does. Write everything in lowercase.", [("lowercase", None)]),
    ("describe a sunny beach using only lowercase letters.", [("lowercase", None)]),
    ("Shout a warning about a wet floor. Use only capital letters.", [("uppercase", None)]),
    ("WRITE A SHORT GREETING IN ALL CAPITAL LETTERS.", [("uppercase", None)]),
    ("Describe a garden. Include the word 'flowers' in your answer.", [("includes", "flowers")]),
    ("Write a sentence about winter that uses the word 'cold'.", [("includes", "cold")]),
    ("Explain what a map is and mention the word 'north'.", [("includes", "north")]),
    ("Describe the sea without using the word 'water'.", [("excludes", "water")]),
    ("Describe a cat without using the word 'cat'.", [("excludes", "cat")]),
    ("Talk about the weather without using the word 'sun'.", [("excludes", "sun")]),
    ("What is a book? Answer in at most 10 words.", [("max_words", 10)]),
    ("Explain gravity in no more than 20 words.", [("max_words", 20)]),
    ("Describe a bird in at most 12 words.", [("max_words", 12)]),
    ("Name a famous building. Answer in at most 5 words.", [("max_words", 5)]),
    ("Give a fact about cheese. End your answer with the word 'Done.'", [("ends_with", "Done.")]),
    (
        "Write a short wish for a friend. End with the exact phrase 'Good luck!'",
        [("ends_with", "Good luck!")],
    ),
    ("Describe a library. Start your answer with the word 'Books'.", [("starts_with", "Books")]),
    ("What is a train? Begin your reply with 'A train'.", [("starts_with", "A train")]),
    ("Answer starting with 'No': can fish climb trees?", [("starts_with", "No")]),
    ("Describe a city park without using any commas.", [("no_comma", None)]),
    ("List what you need to bake bread, without using commas.", [("no_comma", None)]),
    (
        "Return a JSON object with keys 'city' and 'country'. Output only the JSON.",
        [("json", None)],
    ),
    ("Describe a book as a JSON object with a 'title' key. Output nothing but JSON.", [("json", None)]),
    (
        "Name three birds as exactly 3 bullet points and do not use the word 'eagle'.",
        [("bullet_count", 3), ("excludes", "eagle")],
    ),
    (
        "Describe the night sky in lowercase letters and include the word 'stars'.",
        [("lowercase", None), ("includes", "stars")],
    ),
    (
        "Write about autumn in at most 25 words without using any commas.",
        [("max_words", 25), ("no_comma", None)],
    ),
    (
        "Start your answer with 'Hello' and answer in at most 15 words: who are you?",
        [("starts_with", "Hello"), ("max_words", 15)],
    ),
    (
        "Give two facts about water as exactly 2 bullet points. Include the word 'liquid'.",
        [("bullet_count", 2), ("includes", "liquid")],
    ),
    (
        "Describe bread in at most 20 words. End your answer with 'Enjoy.'",
        [("max_words", 20), ("ends_with", "Enjoy.")],
    ),
    (
        "Write a sentence about cars in capital letters only and include the word 'FAST'.",
        [("uppercase", None), ("includes", "FAST")],
    ),
    (
        "Describe tea in lowercase, without commas, in at most 20 words.",
        [("lowercase", None), ("no_comma", None), ("max_words", 20)],
    ),
    (
        "List four countries as exactly 4 bullet points, without the word 'France'.",
        [("bullet_count", 4), ("excludes", "France")],
    ),
    (
        "Explain snow in at most 30 words, start with 'Snow' and end with 'Brr.'",
        [("max_words", 30), ("starts_with", "Snow"), ("ends_with", "Brr.")],
    ),
    (
        "Give a JSON object with a key 'animal'. Output only JSON and do not use the word 'dog'.",
        [("json", None), ("excludes", "dog")],
    ),
    ("Tell me a joke. Your answer must include the word 'because'.", [("includes", "because")]),
    ("Describe a mountain in fewer than 8 words.", [("max_words", 8)]),
    ("Explain how to wash your hands, in lowercase letters only.", [("lowercase", None)]),
]


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows to {path}")


def write_sets(out: str, seed: int) -> None:
    os.makedirs(out, exist_ok=True)
    write_jsonl(os.path.join(out, "general_knowledge.jsonl"), multiple_choice(random.Random(seed)))
    write_jsonl(os.path.join(out, "instructions.jsonl"), [{"prompt": p} for p in INSTRUCTIONS])
    rows = [{"prompt": p, "checks": [{"kind": k, "value": v} for k, v in checks]} for p, checks in IF_PROBE]
    write_jsonl(os.path.join(out, "if_probe.jsonl"), rows)


def write_references(out: str, model_name: str, max_new_tokens: int) -> None:
    """The base model's greedy answers to the drift instructions, with EvalConfig's generation settings."""
    from psft_lightning.evaluation.isolation import isolated
    from psft_lightning.evaluation.ood import load_prompts, make_references
    from psft_lightning.evaluation.ood import write_references as write_rows
    from psft_lightning.evaluation.suite import EvalConfig, reference_file
    from psft_lightning.models import load_model, load_tokenizer

    config = EvalConfig(ood_dir=out, drift_max_new_tokens=max_new_tokens)
    model = load_model(model_name)
    prompts = load_prompts(os.path.join(out, "instructions.jsonl"))
    with isolated(model, config.seed):
        rows = make_references(model, load_tokenizer(model_name), prompts, max_new_tokens, config.batch_size)
    path = reference_file(out, model_name)
    write_rows(path, rows)
    print(f"wrote {len(rows)} base-model answers of {model_name} to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="data/ood")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--references", metavar="MODEL", help="also write MODEL's greedy drift references")
    parser.add_argument(
        "--max-new-tokens", type=int, default=128, help="reference length (EvalConfig default)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    write_sets(args.out, args.seed)
    if args.references:
        write_references(args.out, args.references, args.max_new_tokens)


if __name__ == "__main__":
    main()
