"""A generic caption prior: a few thousand ordinary scene captions, for use as a preserve list.

Concept erasure keeps general images intact better when the preserve list covers everyday
scenes (the idea behind MACE's caption prior). These captions are generated here, deterministically,
by combining word lists written for this project (subjects, what they are doing, where, when, and
a shot type or art style). Nothing is copied from a caption dataset such as COCO.

The lists deliberately avoid artists, celebrities, brands, nudity and violence, i.e. the kind of
thing a user would typically erase, so the prior does not fight common edits; the preserve path
also drops any item that mentions an erased concept.

Pure Python: no torch or ComfyUI import.
"""

from __future__ import annotations

import random
from functools import lru_cache

CAPTION_COUNT = 3000
MAX_WORDS = 20
MAX_CHARS = 149
_SEED = 20240611

# Each group: subjects, what they do (or how they are placed), and where. A caption takes one of each.
_GROUPS: tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = (
    # People doing everyday things.
    (
        (
            "a woman", "a man", "a young girl", "a young boy", "an old man", "an old woman",
            "two people", "a group of friends", "a family", "a teenager", "a toddler",
            "a couple", "a student", "a chef", "a nurse", "a farmer", "a mail carrier",
            "a cyclist", "a runner", "a street musician", "a shopkeeper", "a gardener",
            "a fisherman", "a teacher", "a baker", "a carpenter", "a painter", "a mechanic",
            "a waiter", "two children", "three friends", "a grandmother and her grandson",
            "a father and his daughter", "a mother and her son", "a hiker", "a surfer",
            "a skateboarder", "a tourist", "an office worker", "a librarian",
        ),
        (
            "reading a book", "drinking coffee", "talking on the phone", "walking a dog",
            "riding a bicycle", "eating lunch", "laughing together", "carrying groceries",
            "waiting for a bus", "taking a photo", "sitting on a bench", "looking at a map",
            "holding an umbrella", "cooking dinner", "playing the guitar", "writing in a notebook",
            "sweeping the floor", "watering plants", "smiling at the camera", "wearing a warm coat",
            "standing in line", "stretching after a run", "typing on a laptop", "painting a fence",
            "feeding pigeons", "flying a kite", "washing dishes", "chatting with a neighbor",
        ),
        (
            "in a kitchen", "on a city street", "in a park", "on a beach", "in an office",
            "at a train station", "in a cafe", "at a farmers market", "in a small garden",
            "on a porch", "in a living room", "at a bus stop", "in a library", "on a hiking trail",
            "by a lake", "in a busy square", "at a kitchen table", "on a rooftop terrace",
            "in a classroom", "on a quiet sidewalk", "in a backyard", "at the harbor",
        ),
    ),
    # Boats, trains and aircraft.
    (
        (
            "a sailboat", "a fishing boat", "a ferry", "a rowboat", "a canoe", "a cargo ship",
            "a kayak", "a passenger train", "a freight train", "a small airplane",
            "a hot air balloon", "a helicopter", "a steam train", "a yacht",
        ),
        (
            "moving slowly", "passing by", "waiting", "seen from a distance", "in motion",
            "heading home", "crossing",
        ),
        (
            "near the coast", "over a valley", "across a lake", "along a river", "near a harbor",
            "through the countryside", "past a small town", "over the sea",
        ),
    ),
    # Pets and small animals.
    (
        (
            "a dog", "a cat", "a puppy", "a kitten", "a golden retriever", "a black cat",
            "a small terrier", "a rabbit", "a hamster", "a parrot", "a tabby cat",
            "a sheepdog", "two dogs", "a pair of kittens", "a dachshund", "a beagle",
            "a white poodle", "a guinea pig", "a goldfish", "a turtle",
        ),
        (
            "sleeping", "running", "sitting", "playing with a ball", "looking at the camera",
            "lying in the sun", "chewing a stick", "curled up", "stretching", "jumping",
            "resting", "waiting patiently", "sniffing the ground", "yawning",
        ),
        (
            "on a beach", "in a grassy field", "in a backyard", "on a couch", "in the snow",
            "by a window", "on a wooden floor", "in a garden", "on a blanket", "on a porch",
            "next to a fireplace", "in a basket", "on a kitchen floor", "in a park",
        ),
    ),
    # Farm and wild animals.
    (
        (
            "a horse", "a cow", "a flock of sheep", "a goat", "a pig", "a donkey", "a chicken",
            "a rooster", "a herd of deer", "a fox", "a brown bear", "an elephant", "a giraffe",
            "a zebra", "a lion", "a tiger", "a squirrel", "an owl", "a heron", "a duck",
            "a swan", "a pair of ducks", "a moose", "a camel", "a kangaroo", "a hedgehog",
            "a seagull", "a flock of geese", "a red deer", "a wolf", "a raccoon", "a pelican",
            "an eagle", "a penguin", "a seal", "a monkey", "a hummingbird", "a butterfly",
            "a sparrow", "a robin",
        ),
        (
            "grazing", "standing", "walking", "resting", "drinking water", "looking around",
            "running", "eating", "sleeping", "perched quietly", "crossing", "searching for food",
        ),
        (
            "in a meadow", "in a forest", "by a river", "on a hillside", "in tall grass",
            "near a fence", "on a farm", "in the savanna", "by a pond", "in the snow",
            "at the edge of a field", "on a rocky shore", "in a wetland", "among the trees",
        ),
    ),
    # Vehicles.
    (
        (
            "a red bus", "a yellow taxi", "a blue car", "a white van", "an old truck",
            "a bicycle", "a motorcycle", "a scooter", "a green tractor", "a fire truck",
            "a tram", "a delivery truck", "a camper van", "a vintage car", "a school bus",
            "a police car", "a pickup truck", "a double decker bus", "a taxi", "a minivan",
        ),
        (
            "parked", "driving slowly", "waiting", "moving", "stopped", "passing by",
            "covered in dust", "with its lights on", "sitting idle", "traveling",
        ),
        (
            "on a city street", "on a country road", "at a gas station", "near a bridge",
            "in a parking lot", "on a highway", "in front of a house", "at a harbor",
            "on a dirt road", "by the sea", "at a train station", "on a mountain road",
            "in a small town", "under a tree", "next to a river",
        ),
    ),
    # Food and drink.
    (
        (
            "a bowl of soup", "a plate of pasta", "a slice of pizza", "a cup of coffee",
            "a cup of tea", "a fresh salad", "a sandwich", "a stack of pancakes",
            "a loaf of bread", "a bowl of fruit", "a plate of sushi", "a birthday cake",
            "a basket of apples", "a glass of orange juice", "a plate of cookies",
            "a bowl of rice", "a hamburger", "a plate of eggs and toast", "a bowl of cereal",
            "a pot of stew", "a tray of muffins", "a bunch of bananas", "a pile of oranges",
            "a plate of tacos", "a bowl of noodles", "a chocolate cake", "a pitcher of lemonade",
            "a bowl of strawberries", "a cheese board", "a roast chicken",
        ),
        (
            "on a wooden table", "served on a white plate", "on a kitchen counter",
            "next to a window", "on a picnic blanket", "on a tray", "beside a vase of flowers",
            "on a checkered tablecloth", "on a marble counter", "ready to eat",
        ),
        (
            "in a bright kitchen", "at a small cafe", "in a restaurant", "at a picnic",
            "at a street market", "at a dinner table", "in a bakery",
            "at home", "on a balcony",
        ),
    ),
    # Household and everyday objects.
    (
        (
            "a vase of flowers", "a stack of books", "a laptop", "an old clock", "a teapot",
            "a pair of shoes", "a wooden chair", "a desk lamp", "a potted plant", "a guitar",
            "a backpack", "an umbrella", "a bicycle helmet", "a set of keys", "a coffee mug",
            "a candle", "a globe", "a typewriter", "a record player", "a camera", "a teddy bear",
            "a chess board", "a pair of glasses", "a straw hat", "a wicker basket",
            "a woolen scarf", "a piano", "a clay pot", "a suitcase", "a watering can",
            "a pile of pillows", "an armchair", "a bookshelf", "a wall mirror", "a toy train",
            "a paper lantern", "a soccer ball", "a tennis racket", "a kite", "a sewing machine",
        ),
        (
            "on a wooden table", "on a shelf", "by a window", "on the floor", "on a desk",
            "in the corner", "on a bed", "next to a lamp", "leaning against a wall",
            "on a windowsill",
        ),
        (
            "in a living room", "in a bedroom", "in an office", "in a cozy room",
            "in a sunlit room", "in a quiet study", "in a workshop", "in a hallway",
            "in an attic", "in a classroom", "in a small apartment",
        ),
    ),
    # Buildings and places.
    (
        (
            "a small church", "a lighthouse", "a wooden cabin", "a red barn", "a stone bridge",
            "an old castle", "a tall skyscraper", "a row of houses", "a brick building",
            "a windmill", "a train station", "a farmhouse", "a beach hut", "a market hall",
            "a public library", "a school building", "a modern house", "a cottage",
            "a clock tower", "a greenhouse", "a gas station", "a water tower", "a temple",
            "a museum", "a corner shop", "a fountain", "a pier", "a playground",
            "an apartment block", "a narrow alley",
        ),
        (
            "standing", "seen from below", "surrounded by trees", "under a blue sky",
            "with lights in the windows", "covered in ivy", "next to a road",
            "reflected in the water", "beside a small garden", "on a quiet street",
        ),
        (
            "in a small village", "in the city", "on a hill", "by the sea", "in the countryside",
            "near a river", "in a valley", "in the mountains", "in a town square",
            "on the coast", "at the end of a road",
        ),
    ),
    # Landscapes and nature.
    (
        (
            "a mountain lake", "a field of wheat", "a pine forest", "a sandy beach",
            "a rocky coastline", "a green valley", "a waterfall", "a desert", "a river",
            "a meadow of wildflowers", "a snowy mountain", "a quiet pond", "a rolling hill",
            "a bamboo grove", "a vineyard", "a canyon", "a small island", "a sunflower field",
            "a glacier", "a winding path", "an orchard", "a rice terrace", "a tulip field",
            "a birch forest", "a sand dune", "a tide pool", "a marsh", "a frozen lake",
            "a country lane", "a cliff",
        ),
        (
            "under a clear sky", "covered in mist", "with clouds overhead", "in soft light",
            "under heavy clouds", "with long shadows", "seen from above", "stretching to the horizon",
            "with a few trees", "after the rain",
        ),
        ("",),
    ),
)

_SHOTS: tuple[str, ...] = (
    "", "", "", "", "", "", "",
    "a photo of ", "a photo of ", "a photo of ", "a close-up photo of ", "a wide shot of ",
    "a snapshot of ", "a black and white photo of ", "an aerial photo of ", "a blurry photo of ",
    "a candid photo of ", "a film photo of ", "a phone photo of ", "a low angle shot of ",
    "a painting of ", "a watercolor painting of ", "a pencil sketch of ", "an oil painting of ",
    "a drawing of ", "an illustration of ",
)

_TIMES: tuple[str, ...] = (
    "", "", "", "", "",
    " at sunset", " at sunrise", " in the morning", " in the afternoon", " at night",
    " on a rainy day", " on a sunny day", " in winter", " in autumn", " in spring",
    " in summer", " on a foggy morning", " on a cloudy day", " in the evening",
    " during a snowfall", " at dusk", " at noon",
)


def _subject_order() -> list[tuple[int, int]]:
    """(group, subject) pairs, interleaved across groups so any prefix spreads over categories."""
    pairs: list[tuple[int, int]] = []
    longest = max(len(group[0]) for group in _GROUPS)
    for index in range(longest):
        for group_index, group in enumerate(_GROUPS):
            if index < len(group[0]):
                pairs.append((group_index, index))
    return pairs


def _compose(rng: random.Random, group_index: int, subject_index: int) -> str:
    subjects, actions, places = _GROUPS[group_index]
    parts = [rng.choice(_SHOTS) + subjects[subject_index], rng.choice(actions)]
    place = rng.choice(places)
    if place:
        parts.append(place)
    return " ".join(parts) + rng.choice(_TIMES)


def _fits(caption: str) -> bool:
    return len(caption.split()) <= MAX_WORDS and len(caption) <= MAX_CHARS


@lru_cache(maxsize=8)
def caption_prompts(count: int = CAPTION_COUNT) -> tuple[str, ...]:
    """``count`` unique everyday scene captions, always the same ones in the same order.

    Subjects are visited round-robin (all categories interleaved), so a shorter list is a prefix
    of a longer one and still spreads over many subjects. Randomness comes only from a
    ``random.Random`` with a fixed seed, so the list does not depend on hash seeds or the machine.
    """
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    rng = random.Random(_SEED)
    order = _subject_order()
    captions: list[str] = []
    seen: set[str] = set()
    misses = 0
    position = 0
    while len(captions) < count:
        group_index, subject_index = order[position % len(order)]
        position += 1
        caption = _compose(rng, group_index, subject_index)
        if caption in seen or not _fits(caption):
            misses += 1
            if misses > 100 * max(count, 1):
                raise RuntimeError(f"could not generate {count} unique captions")
            continue
        seen.add(caption)
        captions.append(caption)
    return tuple(captions)


def subject_phrases() -> tuple[str, ...]:
    """Every subject phrase the captions are built from (for tests and diagnostics)."""
    return tuple(subject for group in _GROUPS for subject in group[0])
