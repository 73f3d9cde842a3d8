"""Word lists and templates for `synthetic.py` (constants only).

Clinical facts come as (conversation phrasing, note phrasing) pairs, so the conversation and the note
render one fact two ways. Conversation phrasing is lower case (ACI-Bench transcripts are); `{side}` is
filled with "right"/"left". Numbers in a pair appear, as digits, on both sides.
"""

from typing import NamedTuple

FEMALE = ("martha", "linda", "susan", "karen", "maria", "angela", "julie", "teresa", "diana", "rachel",
          "helen", "sophia", "grace", "nancy", "brenda", "olivia", "emma", "carmen", "ruth", "joyce")
MALE = ("john", "robert", "james", "michael", "david", "thomas", "daniel", "mark", "steven", "paul",
        "kevin", "brian", "george", "edward", "jose", "gary", "ryan", "eric", "larry", "frank")
LAST = ("collins", "garcia", "nguyen", "smith", "johnson", "miller", "davis", "lopez", "wilson",
        "anderson", "taylor", "moore", "jackson", "martin", "lee", "thompson", "white", "harris",
        "clark", "lewis", "walker", "hall", "young", "king", "wright", "scott", "green", "baker")

# frequency: conversation -> note
FREQ = {"once a day": "daily", "twice a day": "twice daily", "three times a day": "three times daily",
        "at bedtime": "at bedtime", "as needed": "as needed", "every 6 hours as needed":
        "every 6 hours as needed"}
UNIT = {"mg": "milligrams", "mcg": "micrograms"}

# condition: (note name, conversation name, ((drug, doses, unit, frequency), ...))
CHRONIC = {
    "hypertension": ("hypertension", "high blood pressure", (
        ("lisinopril", ("10", "20", "40"), "mg", "once a day"),
        ("amlodipine", ("5", "10"), "mg", "once a day"),
        ("losartan", ("25", "50", "100"), "mg", "once a day"))),
    "diabetes": ("type 2 diabetes", "type 2 diabetes", (
        ("metformin", ("500", "850", "1000"), "mg", "twice a day"),
        ("glipizide", ("5", "10"), "mg", "once a day"))),
    "hyperlipidemia": ("hyperlipidemia", "high cholesterol", (
        ("atorvastatin", ("10", "20", "40", "80"), "mg", "at bedtime"),
        ("rosuvastatin", ("5", "10", "20"), "mg", "once a day"))),
    "hypothyroidism": ("hypothyroidism", "low thyroid", (
        ("levothyroxine", ("50", "75", "88", "100", "125"), "mcg", "once a day"),)),
    "asthma": ("asthma", "asthma", (
        ("fluticasone", ("110", "220"), "mcg", "twice a day"),
        ("montelukast", ("10",), "mg", "at bedtime"))),
    "depression": ("depression", "depression", (
        ("sertraline", ("50", "100"), "mg", "once a day"),
        ("escitalopram", ("10", "20"), "mg", "once a day"))),
    "reflux": ("gastroesophageal reflux disease", "acid reflux", (
        ("omeprazole", ("20", "40"), "mg", "once a day"),
        ("pantoprazole", ("40",), "mg", "once a day"))),
    "afib": ("atrial fibrillation", "atrial fibrillation", (
        ("apixaban", ("2.5", "5"), "mg", "twice a day"),
        ("metoprolol", ("25", "50"), "mg", "twice a day"))),
}
# allergy: (conversation, note, drugs it rules out)
ALLERGIES = (("penicillin", "penicillin", ("amoxicillin", "penicillin")),
             ("sulfa drugs", "sulfa drugs", ("sulfamethoxazole",)),
             ("codeine", "codeine", ("codeine",)))

# system: symptom terms a doctor asks about (review of systems)
ROS = {
    "Constitutional": ("fever", "chills", "weight loss", "night sweats"),
    "Cardiovascular": ("chest pain", "palpitations", "leg swelling"),
    "Respiratory": ("shortness of breath", "cough", "wheezing"),
    "Gastrointestinal": ("nausea", "vomiting", "diarrhea", "abdominal pain"),
    "Neurological": ("headaches", "dizziness", "numbness", "tingling"),
    "Musculoskeletal": ("joint pain", "muscle aches"),
    "Skin": ("rash", "itching"),
    "Ears, Nose, Mouth and Throat": ("sore throat", "nasal congestion", "ear pain"),
}
ROS_ORDER = tuple(ROS)

# (system, conversation, note): normal exam findings used to round out an exam
NORMAL_EXAM = (
    ("Neck", "your neck is supple with no lymphadenopathy", "Supple. No lymphadenopathy."),
    ("Cardiovascular", "your heart has a regular rate and rhythm with no murmurs",
     "Regular rate and rhythm. No murmurs."),
    ("Respiratory", "your lungs are clear to auscultation bilaterally",
     "Lungs clear to auscultation bilaterally."),
    ("Gastrointestinal", "your belly is soft and nontender", "Abdomen soft and nontender."),
    ("Neurological", "your strength and sensation are normal", "Strength and sensation intact."),
)
# condition: (conversation, note) of a chronic-disease result with a {value} placeholder and value range
CHRONIC_RESULTS = {
    "diabetes": ("your hemoglobin a1c came back at {v}", "Hemoglobin A1c: {v}%.", (6.1, 9.4)),
    "hyperlipidemia": ("your ldl cholesterol was {v}", "LDL cholesterol: {v} mg/dL.", (70, 190)),
    "hypothyroidism": ("your tsh was {v}", "TSH: {v} mIU/L.", (0.6, 6.8)),
}


class Complaint(NamedTuple):
  """One presenting problem; every tuple of pairs is (conversation, note)."""
  cc: str  # note chief complaint, may hold {side}
  opener: tuple[str, ...]  # how the patient first states it
  onset: tuple[tuple[str, str], ...]  # note side: a sentence with {She}/{she}/{her}
  quality: tuple[tuple[str, str], ...]  # note side: what the patient describes
  positives: tuple[tuple[str, str], ...]  # (ROS system, term) the patient may endorse
  related: tuple[str, ...]  # ROS terms never denied with this complaint
  exam: tuple[tuple[str, str, str], ...]  # (system, conversation, note)
  results: tuple[tuple[str, str], ...]  # results reviewed whatever the diagnosis
  dx: tuple[tuple[str, str, str, tuple[tuple[str, str], ...]], ...]  # (note diagnosis,
  # conversation reasoning, note reasoning, results that go with this diagnosis)
  meds: tuple[tuple[str, tuple[str, ...], str, str], ...]
  orders: tuple[tuple[str, str], ...]
  advice: tuple[tuple[str, str], ...]
  referral: tuple[tuple[str, str], ...]
  pain: bool = True
  sided: bool = False


COMPLAINTS = (
    Complaint(
        cc="{side} knee pain", sided=True,
        opener=("my {side} knee has been bothering me", "i've been having pain in my {side} knee"),
        onset=(("i was playing basketball and came down on it wrong",
                "{She} injured the knee while playing basketball."),
               ("i slipped on some ice in the driveway", "{She} slipped on ice in the driveway."),
               ("there wasn't any injury , it just started hurting", "{She} denies any specific injury.")),
        quality=(("it's a sharp pain on the inside of the knee", "a sharp pain along the medial knee"),
                 ("it aches all the time and it's worse on the stairs",
                  "a constant ache, worse on stairs")),
        positives=(("Musculoskeletal", "swelling"), ("Musculoskeletal", "stiffness")),
        related=("joint pain", "leg swelling"),
        exam=(("Musculoskeletal", "there's tenderness along the medial joint line of your {side} knee",
               "Tenderness to palpation along the medial joint line of the {side} knee."),
              ("Musculoskeletal", "you have decreased range of motion with flexion",
               "Decreased range of motion with flexion."),
              ("Musculoskeletal", "there's no laxity of the ligaments", "No ligamentous laxity.")),
        results=(("the x-ray of your {side} knee doesn't show any fracture",
                  "X-ray of the {side} knee: no fracture."),),
        dx=(("{side} knee sprain", "i think you sprained your knee",
             "Findings are consistent with a sprain.", ()),
            ("{side} medial meniscus tear", "i'm worried you may have torn the meniscus",
             "Exam is concerning for a medial meniscus tear.", ())),
        meds=(("ibuprofen", ("400", "600", "800"), "mg", "three times a day"),
              ("meloxicam", ("7.5", "15"), "mg", "once a day"),
              ("naproxen", ("250", "500"), "mg", "twice a day")),
        orders=(("i'm going to order an mri of your {side} knee", "MRI of the {side} knee ordered."),),
        advice=(("ice it for 20 minutes a few times a day and keep it elevated",
                 "Ice for 20 minutes several times a day and elevate the leg."),
                ("wear a knee brace when you're walking", "Knee brace for ambulation.")),
        referral=(("i'm going to refer you to physical therapy", "Referral to physical therapy."),
                  ("i want you to see orthopedics", "Referral to orthopedics."))),
    Complaint(
        cc="low back pain",
        opener=("my lower back has been killing me", "i've been having this low back pain"),
        onset=(("i was lifting some heavy boxes when we moved",
                "The pain began after lifting heavy boxes during a move."),
               ("i was working in the garden all weekend", "The pain began after working in the garden."),
               ("it just came on , i didn't do anything different", "{She} denies any inciting event.")),
        quality=(("it's a dull ache and it goes down my {side} leg",
                  "a dull ache radiating down the {side} leg"),
                 ("it's tight and spasming , mostly in the morning",
                  "tightness and spasms, worse in the morning")),
        positives=(("Neurological", "tingling"), ("Musculoskeletal", "stiffness")),
        related=("joint pain", "muscle aches", "numbness"),
        exam=(("Musculoskeletal", "there's tenderness over the lumbar paraspinal muscles",
               "Tenderness to palpation of the lumbar paraspinal muscles."),
              ("Musculoskeletal", "the straight leg raise is positive on the {side}",
               "Positive straight leg raise on the {side}."),
              ("Musculoskeletal", "your range of motion is limited with forward flexion",
               "Limited range of motion with forward flexion.")),
        results=(("the x-ray of your lumbar spine shows mild degenerative changes",
                  "Lumbar spine x-ray: mild degenerative changes."),),
        dx=(("lumbar strain", "i think you strained the muscles in your back",
             "Consistent with a lumbar strain.", ()),
            ("lumbar radiculopathy", "this sounds like a pinched nerve in your lower back",
             "Symptoms suggest lumbar radiculopathy.", ())),
        meds=(("cyclobenzaprine", ("5", "10"), "mg", "at bedtime"),
              ("naproxen", ("250", "500"), "mg", "twice a day"),
              ("ibuprofen", ("400", "600"), "mg", "three times a day")),
        orders=(("i'm going to order an mri of your lumbar spine", "MRI of the lumbar spine ordered."),),
        advice=(("use heat on your back for 15 minutes at a time", "Heat for 15 minutes at a time."),
                ("avoid heavy lifting for the next 2 weeks", "Avoid heavy lifting for 2 weeks.")),
        referral=(("i'm going to refer you to physical therapy", "Referral to physical therapy."),)),
    Complaint(
        cc="chest pain",
        opener=("i've been having some chest pain", "i've had this pressure in my chest"),
        onset=(("it started when i was climbing the stairs at work",
                "The pain began while climbing stairs at work."),
               ("it comes on after i eat a big meal", "The pain occurs after large meals."),
               ("it woke me up at night", "The pain has woken {her} from sleep.")),
        quality=(("it feels like pressure in the middle of my chest", "a pressure-like substernal pain"),
                 ("it's more of a burning feeling", "a burning quality")),
        positives=(("Respiratory", "shortness of breath"), ("Cardiovascular", "palpitations")),
        related=("chest pain",),
        exam=(("Cardiovascular", "your heart has a regular rate and rhythm with no murmurs",
               "Regular rate and rhythm. No murmurs."),
              ("Musculoskeletal", "there's no tenderness when i press on your chest wall",
               "No chest wall tenderness.")),
        results=(("your ekg today shows normal sinus rhythm", "EKG: normal sinus rhythm."),
                 ("your troponin was normal", "Troponin: within normal limits.")),
        dx=(("chest pain, likely reflux", "i think this is most likely coming from acid reflux",
             "Symptoms are most consistent with reflux.", ()),
            ("chest pain, rule out angina", "i want to make sure this isn't your heart",
             "A cardiac cause needs to be ruled out.", ())),
        meds=(("omeprazole", ("20", "40"), "mg", "once a day"),
              ("aspirin", ("81",), "mg", "once a day")),
        orders=(("i'm going to order a stress test", "Stress test ordered."),
                ("i want to get an echocardiogram", "Echocardiogram ordered.")),
        advice=(("go to the emergency room if the pain gets worse or lasts more than 15 minutes",
                 "Go to the emergency department if pain worsens or lasts more than 15 minutes."),),
        referral=(("i'm going to refer you to cardiology", "Referral to cardiology."),)),
    Complaint(
        cc="cough", pain=False,
        opener=("i've had this cough that won't go away", "i keep coughing"),
        onset=(("it started after a cold", "The cough began after a cold."),
               ("my kids were sick first and then i got it", "{She} reports sick contacts at home.")),
        quality=(("i'm bringing up some yellow phlegm", "a cough productive of yellow sputum"),
                 ("it's a dry cough , worse at night", "a dry cough, worse at night")),
        positives=(("Constitutional", "fever"), ("Respiratory", "wheezing"), ("Constitutional", "chills")),
        related=("cough", "shortness of breath"),
        exam=(("Respiratory", "i hear some rhonchi that clear when you cough",
               "Rhonchi that clear with cough."),
              ("Respiratory", "i hear some mild wheezing", "Mild wheezing.")),
        results=(),
        dx=(("acute bronchitis", "i think this is bronchitis",
             "Presentation is consistent with acute bronchitis.",
             (("your chest x-ray is clear", "Chest x-ray: no acute findings."),)),
            ("community-acquired pneumonia", "this looks like a pneumonia",
             "Findings are consistent with community-acquired pneumonia.",
             (("your chest x-ray shows an infiltrate in the {side} lower lobe",
               "Chest x-ray: {side} lower lobe infiltrate."),))),
        meds=(("azithromycin", ("250", "500"), "mg", "once a day"),
              ("benzonatate", ("100", "200"), "mg", "three times a day")),
        orders=(("i'm going to get a chest x-ray in 6 weeks", "Repeat chest x-ray in 6 weeks."),),
        advice=(("drink plenty of fluids and get some rest", "Fluids and rest."),),
        referral=(("i'm going to refer you to pulmonology", "Referral to pulmonology."),), sided=True),
    Complaint(
        cc="headaches",
        opener=("i've been getting these headaches", "my head has been hurting a lot"),
        onset=(("they started when i began working longer hours",
                "The headaches began when {she} started working longer hours."),
               ("i think they started after i changed my glasses",
                "The headaches began after a change in eyeglasses.")),
        quality=(("it's a throbbing pain behind my eyes", "a throbbing pain behind the eyes"),
                 ("it feels like a tight band around my head", "a band-like tightness")),
        positives=(("Gastrointestinal", "nausea"), ("Neurological", "sensitivity to light")),
        related=("headaches", "dizziness"),
        exam=(("Neurological", "your cranial nerves are intact", "Cranial nerves intact."),
              ("Eyes", "your pupils are equal and reactive", "Pupils equal and reactive.")),
        results=(("the ct of your head was normal", "CT head: no acute intracranial abnormality."),),
        dx=(("migraine without aura", "i think these are migraines",
             "History is consistent with migraine.", ()),
            ("tension-type headache", "these sound like tension headaches",
             "Features are consistent with tension-type headache.", ())),
        meds=(("sumatriptan", ("50", "100"), "mg", "as needed"),
              ("propranolol", ("20", "40"), "mg", "twice a day")),
        orders=(("i'm going to order an mri of your brain", "MRI of the brain ordered."),),
        advice=(("keep a headache diary", "Keep a headache diary."),
                ("try to get at least 7 hours of sleep", "Sleep at least 7 hours nightly.")),
        referral=(("i'm going to refer you to neurology", "Referral to neurology."),)),
    Complaint(
        cc="abdominal pain",
        opener=("i've been having pain in my stomach", "my belly has been hurting"),
        onset=(("it started after i ate at a new restaurant",
                "The pain began after eating at a new restaurant."),
               ("it's been coming and going for a while", "The pain has been intermittent.")),
        quality=(("it's crampy and in the lower right side", "a crampy pain in the right lower quadrant"),
                 ("it's a gnawing pain up high , under my ribs", "a gnawing epigastric pain")),
        positives=(("Gastrointestinal", "nausea"), ("Gastrointestinal", "diarrhea"),
                   ("Gastrointestinal", "bloating")),
        related=("abdominal pain",),
        exam=(("Gastrointestinal", "there's tenderness in the epigastric area",
               "Tenderness to palpation in the epigastric region."),
              ("Gastrointestinal", "there's no rebound or guarding", "No rebound or guarding.")),
        results=(("your lipase was normal", "Lipase: within normal limits."),
                 ("the ultrasound of your abdomen was normal", "Abdominal ultrasound: unremarkable.")),
        dx=(("gastritis", "i think this is inflammation of the stomach lining",
             "Symptoms suggest gastritis.", ()),
            ("gastroenteritis", "this looks like a stomach bug", "Consistent with gastroenteritis.", ())),
        meds=(("famotidine", ("20", "40"), "mg", "twice a day"),
              ("ondansetron", ("4", "8"), "mg", "every 6 hours as needed")),
        orders=(("i'm going to order an upper endoscopy", "Upper endoscopy ordered."),),
        advice=(("avoid spicy foods and alcohol", "Avoid spicy foods and alcohol."),),
        referral=(("i'm going to refer you to gastroenterology", "Referral to gastroenterology."),)),
    Complaint(
        cc="sore throat",
        opener=("my throat is really sore", "i have a sore throat"),
        onset=(("my coworker had strep last week", "{She} reports a coworker with strep throat last week."),
               ("it started with a runny nose", "Symptoms began with a runny nose.")),
        quality=(("it hurts a lot when i swallow", "pain with swallowing"),),
        positives=(("Constitutional", "fever"), ("Ears, Nose, Mouth and Throat", "ear pain")),
        related=("sore throat",),
        exam=(("Ears, Nose, Mouth and Throat", "your tonsils are swollen with some white exudate",
               "Tonsillar swelling with exudate."),
              ("Neck", "you have some tender lymph nodes in your neck",
               "Tender cervical lymphadenopathy.")),
        results=(),
        dx=(("streptococcal pharyngitis", "this is strep throat",
             "Consistent with streptococcal pharyngitis.",
             (("your rapid strep test was positive", "Rapid strep test: positive."),)),),
        meds=(("amoxicillin", ("500",), "mg", "twice a day"),
              ("azithromycin", ("250",), "mg", "once a day")),
        orders=(("i'm going to send a throat culture", "Throat culture sent."),),
        advice=(("gargle with warm salt water", "Warm salt water gargles."),),
        referral=(("i'm going to refer you to ent", "Referral to ENT."),)),
    Complaint(
        cc="rash", pain=False,
        opener=("i've got this rash on my arm", "i noticed a rash on my {side} arm"),
        onset=(("it showed up after i went hiking", "The rash appeared after hiking."),
               ("i started using a new laundry detergent",
                "The rash began after switching laundry detergent.")),
        quality=(("it's red and really itchy", "a red, pruritic rash"),),
        positives=(("Skin", "itching"),),
        related=("rash", "itching"),
        exam=(("Skin", "there's a red patchy rash on your {side} forearm",
               "Erythematous patchy rash on the {side} forearm."),
              ("Skin", "there's no sign of infection", "No signs of secondary infection.")),
        results=(),
        dx=(("contact dermatitis", "this looks like contact dermatitis",
             "Consistent with contact dermatitis.", ()),),
        meds=(("prednisone", ("20", "40"), "mg", "once a day"),
              ("cetirizine", ("10",), "mg", "once a day")),
        orders=(),
        advice=(("avoid whatever you think caused it", "Avoid the suspected trigger."),),
        referral=(("i'm going to refer you to dermatology", "Referral to dermatology."),), sided=True),
)

SMALL_TALK = (
    ("how was your weekend ?", "it was good , we went to see my daughter"),
    ("did you have any trouble finding parking ?", "no , it was fine today"),
    ("how's work been going ?", "busy , lots of long hours"),
    ("did you get a chance to watch the game last night ?", "i did , what a finish"),
    ("how was the trip you were planning ?", "it was great , we went to the coast"),
    ("are you staying cool in this heat ?", "trying to , it's been brutal"),
)
DICTATION = ("i'm going to dictate a little bit about you , okay ?",
             "let me put a few notes in here , okay ?")

# --- medical abstracts ---
CONDITIONS = ("type 2 diabetes", "heart failure", "chronic obstructive pulmonary disease", "hypertension",
              "major depressive disorder", "rheumatoid arthritis", "community-acquired pneumonia",
              "atrial fibrillation", "chronic kidney disease", "asthma", "osteoporosis", "migraine",
              "psoriasis", "ulcerative colitis", "sepsis", "stroke")
DRUGS = ("empagliflozin", "dapagliflozin", "semaglutide", "sacubitril-valsartan", "tiotropium",
         "esketamine", "tofacitinib", "ceftriaxone", "apixaban", "finerenone", "dupilumab",
         "denosumab", "erenumab", "secukinumab", "vedolizumab", "hydrocortisone", "tenecteplase",
         "metformin", "atorvastatin", "vitamin D")
COMPARATORS = ("usual care", "standard therapy")  # placebo when the design says so
DESIGNS = (("randomized, double-blind, placebo-controlled trial", "randomized trial"),
           ("randomized controlled trial", "randomized trial"),
           ("prospective cohort study", "cohort study"),
           ("retrospective cohort study", "cohort study"),
           ("open-label randomized trial", "randomized trial"))
OUTCOMES = ("all-cause mortality", "hospitalization", "disease progression", "treatment failure",
            "major adverse cardiovascular events", "symptom relapse", "a composite of death or readmission")
SETTINGS = ("at 42 centers in Europe", "at 18 academic hospitals in the United States",
            "in primary care practices in Canada", "in 12 countries", "at a single tertiary center")
BACKGROUND = (
    "{condition} remains a leading cause of morbidity, and effective treatments are limited.",
    "The effect of {drug} on outcomes in patients with {condition} is uncertain.",
    "Whether {drug} improves outcomes in {condition} has not been established.",
    "Patients with {condition} are at high risk of {outcome}, and new therapies are needed.")

# --- general prose: topic -> sentence templates ({city}, {food}, {season}, {day}, {n}, {year}, {name}) ---
CITIES = ("Lisbon", "Kyoto", "Denver", "Nairobi", "Oslo", "Lima", "Quebec", "Hanoi", "Porto", "Seville",
          "Melbourne", "Chicago", "Istanbul", "Dublin", "Marseille", "Vancouver")
FOODS = ("lentil soup", "roasted vegetables", "banana bread", "fish tacos", "mushroom risotto",
         "apple pie", "vegetable curry", "grilled salmon", "pancakes", "tomato salad")
SEASONS = ("spring", "summer", "autumn", "winter")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
PEOPLE = ("the old ferryman", "a local baker", "my neighbor", "the museum guide", "a young engineer",
          "our teacher", "the town mayor", "a retired sailor")
GENERAL = {
    "weather": (
        "The forecast for {day} calls for light rain in {city}, with temperatures near {n} degrees.",
        "In {season}, the winds off the water can make {city} feel much colder than it is.",
        "A band of clouds moved in overnight, and by morning the streets were wet.",
        "Forecasters expect a dry {season}, which worries farmers outside {city}.",
        "The storm passed quickly, leaving a clear sky and a sharp drop in temperature."),
    "travel": (
        "The train from {city} takes about {n} hours and follows the river most of the way.",
        "We arrived in {city} on a {day} and walked straight to the old market.",
        "{person_cap} recommended a small hotel near the harbor.",
        "Most visitors come in {season}, when the hills are green and the days are long.",
        "The bus was late, so we spent an hour reading in a cafe by the station."),
    "cooking": (
        "To make {food}, start by chopping an onion and warming a little oil in a heavy pan.",
        "{person_cap} taught me a recipe for {food} that takes only {n} minutes.",
        "Let the mixture rest for {n} minutes before you put it in the oven.",
        "A good {food} depends more on patience than on expensive ingredients.",
        "We served the {food} warm, with bread and a simple green salad."),
    "history": (
        "The city of {city} was founded in {year}, according to the oldest surviving records.",
        "By {year}, the port had become one of the busiest in the region.",
        "Historians still debate why the old bridge was abandoned after the flood.",
        "{person_cap} kept a diary through the winter of {year}, which survives in the archive.",
        "The cathedral took almost {n} years to build and was finished in {year}."),
    "gardening": (
        "Plant the seeds in early {season}, about {n} centimeters apart.",
        "Tomatoes need at least six hours of sun and regular watering.",
        "{person_cap} grows herbs on a narrow balcony facing south.",
        "Mulch keeps the soil moist and stops weeds from taking over the beds.",
        "After the first frost, cut the plants back and cover the roots with straw."),
    "sports": (
        "The home team won {n} to {m} after a late goal on {day} night.",
        "Training starts at six in the morning, even in the middle of {season}.",
        "{person_cap} has run the {city} marathon every year since {year}.",
        "The coach said the team played with more patience in the second half.",
        "Tickets for the final sold out within {n} minutes."),
}
