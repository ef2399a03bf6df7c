"""Write blurlite/demo_data/topics.csv: the small labelled set `blurlite demo` trains on (written for the project).

Short news-style sentences on four topics, composed from hand-written templates and fillers; deterministic.
Run from the repository root: python tools/make_demo_data.py
"""
import csv
import random
from pathlib import Path

TOPICS = {
    "sports": (["The {team} beat their rivals {win} in {place} last {day}.",
                "{player} scored twice as the {team} won the {event}.",
                "Fans packed the stadium in {place} for the {event}.",
                "The coach of the {team} praised the defence after a {draw} draw.",
                "{player} will miss the {event} with a knee injury.",
                "A late goal gave the {team} the {event} title.",
                "The {team} signed {player} on a three-year contract.",
                "Tickets for the {event} in {place} sold out within an hour.",
                "{player} broke the record for the fastest lap at the {event}.",
                "After a {win} loss, the {team} sacked their manager."],
               dict(team=["Rovers", "United", "Tigers", "Falcons", "Wanderers", "Giants", "Rangers", "Eagles"],
                    player=["Ana Silva", "Tom Becker", "Lena Ford", "Marco Ruiz", "Yuki Sato", "Sam Okafor"],
                    win=["2-1", "3-0", "4-2", "1-0", "5-3"], draw=["1-1", "0-0", "2-2", "3-3"],
                    event=["cup final", "league derby", "marathon", "grand prix", "semi-final", "open tournament"])),
    "weather": (["Heavy rain is expected in {place} on {day}, with {wind} winds.",
                 "Forecasters warn of {cold} temperatures across {region} this {part}.",
                 "A heatwave pushed temperatures in {place} above {temp} degrees.",
                 "Snow closed several roads in {region} on {day} morning.",
                 "Thunderstorms will move across {region} by {day} evening.",
                 "Fog delayed flights at the {place} airport this {part}.",
                 "The {part} will stay dry and sunny in {place}, with highs near {temp} degrees.",
                 "Flood warnings were issued for rivers in {region} after days of rain.",
                 "{wind} winds knocked down trees and power lines in {place}.",
                 "Frost is likely overnight in {region}, so cover young plants."],
                dict(wind=["strong", "gusty", "gale-force", "light", "northerly"],
                     cold=["freezing", "below-average", "bitterly cold", "near-zero"],
                     temp=["30", "35", "28", "38", "25"],
                     region=["the north", "the coast", "the highlands", "the valley", "the south-east"],
                     part=["weekend", "week", "afternoon", "morning"])),
    "food": (["This {dish} recipe needs only {ingredient}, salt and twenty minutes.",
              "The new restaurant in {place} serves the best {dish} in town.",
              "Add the {ingredient} slowly and stir until the sauce thickens.",
              "Our chef shares her secret for a crispy {dish}.",
              "Roast the {ingredient} in a hot oven before adding it to the {dish}.",
              "A bowl of {dish} with fresh {ingredient} makes a quick lunch.",
              "Critics loved the {dish} at the food festival in {place}.",
              "Bake the {dish} for forty minutes, until golden on top.",
              "Season the {ingredient} with pepper and a squeeze of lemon.",
              "The bakery in {place} sells out of {dish} every {day}."],
             dict(dish=["lasagne", "curry", "noodle soup", "apple pie", "risotto", "omelette", "flatbread", "stew"],
                  ingredient=["garlic", "tomatoes", "mushrooms", "basil", "chickpeas", "butter", "onions"])),
    "technology": (["{company} released a new {device} with a faster chip and longer battery life.",
                    "A software update for the {device} fixes a serious security flaw.",
                    "{company} is testing an app that translates speech in real time.",
                    "Engineers at {company} built a {device} that runs for a week on one charge.",
                    "The startup raised money to build cheaper {device}s for schools.",
                    "Researchers showed a chip that trains neural networks with less energy.",
                    "{company} will stop supporting its oldest {device} next {part}.",
                    "A bug in the {device} firmware drained batteries overnight.",
                    "The new {device} from {company} supports faster wireless charging.",
                    "Developers can now run the {company} language model on a {device}."],
                   dict(company=["Nimbus", "Quantix", "Orbital Labs", "Vertex", "Lumen", "Pixelworks"],
                        device=["phone", "laptop", "smartwatch", "tablet", "router", "headset"],
                        part=["year", "month", "spring"])),
}
SHARED = dict(place=["Lisbon", "Denver", "Osaka", "Nairobi", "Leeds", "Porto", "Quebec", "Perth"],
              day=["Monday", "Tuesday", "Friday", "Saturday", "Sunday"])
PER_TOPIC, VALID_EVERY = 100, 5


def sentences(topic, rng):
    templates, fillers = TOPICS[topic]
    fillers = {**SHARED, **fillers}
    seen = set()
    while len(seen) < PER_TOPIC:
        template = rng.choice(templates)
        text = template.format(**{k: rng.choice(v) for k, v in fillers.items()})
        seen.add(text[0].upper() + text[1:])
    return sorted(seen)


def main():
    rng = random.Random(0)
    rows = [(s, topic) for topic in TOPICS for s in sentences(topic, rng)]
    rng.shuffle(rows)
    path = Path("blurlite/demo_data/topics.csv")
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label", "is_valid"])
        writer.writerows((text, label, i % VALID_EVERY == 0) for i, (text, label) in enumerate(rows))
    print(f"wrote {len(rows)} rows to {path}")


if __name__ == "__main__":
    main()
