"""Fixed word lists for `heal_jax.eval.facts` (constants only).

Stop words and dialogue fillers, negation and affirming cues, gender and relative words, laterality words,
month and number words, units, multi-word phrases and single words with their canonical forms, and drug names
(brand -> generic, generic names, generic-name suffixes). How they are used is described in
`heal_jax.eval.facts`.
"""


def _set(words: str) -> frozenset[str]:
  return frozenset(words.split())


def _pairs(spec: str) -> dict[str, str]:
  """'a=b; c d=e' -> {'a': 'b', 'c d': 'e'}; whitespace inside keys and values is normalised."""
  out = {}
  for entry in spec.split(";"):
    if entry.strip():
      key, value = entry.split("=")
      out[" ".join(key.split())] = " ".join(value.split())
  return out


STOPWORDS = _set("""
a about above after again against all am an and any anything are around as at be because been before being below
between both but by can could did do does doing done down during each either else ever every few for from
further had has have having here how i if in into is it its itself just me more most much my myself of off on
once only or other others our out over own same so some something such than that the their theirs them then
there these they this those through to too under until up upon very was we were what when where which while who
whom why will with would you your yours yourself also already still really actually probably pretty maybe
perhaps kind sort lot bit little thing things stuff um uh uhm hmm mm mhm huh oh ok okay yeah yes yep yup well
like just guess think know get gets got getting go goes going gone gonna wanna let lets say says said tell told
see saw seen come comes came want wanted need needed sure alright thank thanks hi hello bye good great patient
patients pt report reports reported reporting complain complains complained complaining state states stated
stating note notes noted mention mentions mentioned present presents presented history today currently current
time per would will shall may might must should s t d ll ve re m dr doctor mr mrs ms miss sir madam he him his
himself she her hers herself one
""")
# Note style: words a clinician writes around facts ("significant for", "approximately", "however") that
# a conversation rarely says; left out when a generated fact's support in the source is checked. None
# may share its stem with a clinical word (left out for that: several / severe, quite / quit, essentially /
# essential, system / systemic, continue / continuous, initial / initiate, question / questionable, perform
# / performance, indicate / indication, basically / basic).
STYLE_WORDS = _set("""
however although though whereas except otherwise significant significantly apparently
reportedly approximately subsequently unfortunately somewhat seem seems seemed believe believes including
include includes included review reviewed evaluation evaluated further additional additionally regarding
overall yo past prior previous previously use uses usage status complaint complaints
recent recently given discuss discussed since return returns
follow followup followed point possible possibly obtain obtained agree agrees agreed underwent
undergo undergone brought detail details detailed desire desires desired
""")
# Words one side of a conversation and a note say differently, mapped (after stemming) to one term, or to
# several ("appendectomy" -> appendix + removal), when a generated fact's support in the source is checked.
SUPPORT_SYNONYMS = {
    **dict.fromkeys("disease diseases disorder disorders condition conditions"
                    .split(), ("disease",)),  # not illness: its stem is ill's
    **dict.fromkeys("alcohol drink drinks drank booze".split(), ("alcohol",)),
    **dict.fromkeys("mommy mama mum".split(), ("mother",)),
    **dict.fromkeys("daddy papa".split(), ("father",)),
    "grandpa": ("grandfather",), "granddad": ("grandfather",), "grandma": ("grandmother",),
    "granny": ("grandmother",),
    **dict.fromkeys("removal removed remove removing excised excision".split(), ("removal",)),
    "appendectomy": ("appendix", "removal"), "tonsillectomy": ("tonsil", "removal"),
    "cholecystectomy": ("gallbladder", "removal"), "hysterectomy": ("uterus", "removal"),
    "mastectomy": ("breast", "removal"), "nephrectomy": ("kidney", "removal"),
    "prostatectomy": ("prostate", "removal"), "thyroidectomy": ("thyroid", "removal"),
    "colectomy": ("colon", "removal"), "splenectomy": ("spleen", "removal"),
    "womb": ("uterus",), "gall": ("gallbladder",),
    **dict.fromkeys("married wife husband spouse".split(), ("married",)),
}
# A fact saying only that findings are normal ("Noncontributory.", "Unremarkable.") is supported by any
# denial in the source ("Any illnesses in the family?" "No, nothing.").
NORMAL_FINDINGS = _set("noncontributory unremarkable normal")
ONE_AS_PRONOUN_AFTER = _set("no any every some the this that which each other another")
NEGATIVE_QUESTION_CUES = _set("no not never none nor neither")
NEGATION_CUES = _set("no not denies deny denied denying without negative never none nor neither absent")
TERMINATORS = _set("but however although though whereas except")
AFFIRMING = _set("has have had reports reported endorses endorsed complains complained notes noted admits states stated "
                 "positive presents")
NO_WORDS = _set("no nope nah never none negative")
MALE = _set("he him his himself male man gentleman boy mr sir")
FEMALE = _set("she her hers herself female woman lady girl mrs ms miss madam")
MALE_DESCRIPTORS = _set("male man gentleman mr")
FEMALE_DESCRIPTORS = _set("female woman lady mrs ms")
MALE_ADDRESS = _set("sir")  # said by the doctor to the patient
FEMALE_ADDRESS = _set("madam")  # also "ma'am"
RELATIVES = _set("""
mother mom father dad brother sister son daughter wife husband aunt uncle grandmother grandfather grandson
granddaughter sibling siblings child children kid kids nephew niece cousin friend partner boyfriend girlfriend
fiance roommate
""")
LINKS = _set("of is was at")
SIDE_WORDS = {"left": frozenset({"left"}), "right": frozenset({"right"}),
              "bilateral": frozenset({"left", "right"})}

MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
MONTH_WORDS = {**{m: m for m in MONTHS}, "january": "jan", "february": "feb", "march": "mar",
               "april": "apr", "june": "jun", "july": "jul", "august": "aug", "september": "sep",
               "sept": "sep", "october": "oct", "november": "nov", "december": "dec"}
ONES = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                                   "fourteen fifteen sixteen seventeen eighteen nineteen".split())}
TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
SCALES = {"hundred": 100, "thousand": 1000}
ORDINALS = {w: i for i, w in enumerate("first second third fourth fifth sixth seventh eighth ninth tenth eleventh "
                                       "twelfth thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth "
                                       "nineteenth".split(), 1)}
ORDINALS.update({"twentieth": 20, "thirtieth": 30})

UNITS = _pairs("""
mg=mg; milligram=mg; milligrams=mg; mcg=mcg; microgram=mcg; micrograms=mcg; g=g; gram=g; grams=g; kg=kg;
kilogram=kg; kilograms=kg; kilo=kg; kilos=kg; lb=lb; lbs=lb; pound=lb; pounds=lb; oz=oz; ounce=oz; ounces=oz;
ml=ml; cc=ml; milliliter=ml; milliliters=ml; liter=l; liters=l; cm=cm; centimeter=cm; centimeters=cm; mm=mm;
millimeter=mm; millimeters=mm; inch=inch; inches=inch; percent=percent; mmhg=mmhg; bpm=bpm; unit=unit;
units=unit; iu=unit; meq=meq; degree=degree; degrees=degree; year=year; years=year; month=month; months=month;
week=week; weeks=week; day=day; days=day; hour=hour; hours=hour; minute=minute; minutes=minute; times=times;
tablet=tablet; tablets=tablet; pill=tablet; pills=tablet; capsule=tablet; capsules=tablet; puff=puff;
puffs=puff; pack=pack; packs=pack; drink=drink; drinks=drink; yo=yo
""")

# Multi-word phrases -> canonical text (applied longest first, after numbers are digits).
PHRASES = _pairs("""
high blood pressure=hypertension; elevated blood pressure=hypertension; high cholesterol=hyperlipidemia; heart
attack=myocardial infarction; shortness of breath=dyspnea; short of breath=dyspnea; trouble breathing=dyspnea;
difficulty breathing=dyspnea; hard to breathe=dyspnea; throwing up=vomiting; threw up=vomiting; throw
up=vomiting; loose stools=diarrhea; bowel movement=stool; bowel movements=stool; lack of energy=fatigue; no
energy=fatigue; pins and needles=tingling; x ray=xray; x rays=xray; emergency room=emergency department; sugar
diabetes=diabetes; birth control=contraceptive; once a day=daily; once daily=daily; every day=daily; 1 time a
day=daily; twice a day=bid; twice daily=bid; 2 times a day=bid; 2 times daily=bid; three times a day=tid; 3
times a day=tid; 3 times daily=tid; 4 times a day=qid; 4 times daily=qid; every night=nightly; at night=nightly;
at bedtime=nightly; as needed=prn; when needed=prn; years old=yo; year old=yo; y o=yo; yr old=yo; years of
age=yo; no known drug allergies=nkda; no known allergies=nkda; drug allergies=medication allergy; drug
allergy=medication allergy; gastroesophageal reflux disease=reflux; gastroesophageal reflux=reflux; acid
reflux=reflux
""")
SLASHED = {"w/o": "without", "s/p": "status post", "h/o": "history of", "c/o": "complains of",
           "n/v": "nausea vomiting", "f/u": "follow up", "r/o": "rule out"}

WORDS = _pairs("""
htn=hypertension; hld=hyperlipidemia; dm=diabetes; t2dm=diabetes; diabetic=diabetes; cad=coronary artery
disease; chf=congestive heart failure; afib=atrial fibrillation; mi=myocardial infarction; cva=stroke;
tia=transient ischemic attack; dvt=deep vein thrombosis; gerd=reflux; uti=urinary tract infection; uri=upper
respiratory infection; sob=dyspnea; hx=history; pmh=past medical history; psh=surgical history; etoh=alcohol;
alcoholic=alcohol; drinking=alcohol; drinker=alcohol; beer=alcohol; wine=alcohol; liquor=alcohol; tobacco=smoke;
cigarette=smoke; cigarettes=smoke; smoker=smoke; smoking=smoke; smokes=smoke; smoked=smoke; cigar=smoke;
cigars=smoke; nonsmoker=not smoke; nondrinker=not alcohol; bp=blood pressure; hr=heart rate; rr=respiratory
rate; temp=temperature; wt=weight; dx=diagnosis; tx=treatment; rx=prescription; sx=symptoms; fx=fracture;
qd=daily; qhs=nightly; po=oral; iv=intravenous; ed=emergency department; er=emergency department;
ekg=electrocardiogram; ecg=electrocardiogram; cxr=chest xray; xrays=xray; radiograph=xray; wbc=white blood cell;
hgb=hemoglobin; nkda=no medication allergy; w=with; abd=abdomen; abdominal=abdomen; belly=abdomen;
tummy=abdomen; renal=kidney; cardiac=heart; pulmonary=lung; hepatic=liver; gastric=stomach; cerebral=brain;
ocular=eye; cutaneous=skin; dermal=skin; osseous=bone; articular=joint; urinary=urine; urination=urine;
urinate=urine; urinating=urine; pee=urine; peeing=urine; poop=stool; dizzy=dizziness; lightheaded=dizziness;
lightheadedness=dizziness; visual=vision; visually=vision; tired=fatigue; fatigued=fatigue; exhausted=fatigue;
febrile=fever; fevers=fever; itchy=itch; itching=itch; itchiness=itch; pruritus=itch; swollen=swelling;
edema=swelling; painful=pain; hurts=pain; hurt=pain; hurting=pain; ache=pain; aches=pain; aching=pain;
sore=pain; soreness=pain; tenderness=tender; nauseous=nausea; nauseated=nausea; diarrhoea=diarrhea;
vomit=vomiting; vomited=vomiting; emesis=vomiting; carcinoma=cancer; malignancy=cancer; feet=foot; teeth=tooth;
children=child; kids=child; kid=child; women=woman; men=man; mom=mother; dad=father; physician=doctor;
medicine=medication; medicines=medication; meds=medication; operation=surgery; surgical=surgery;
surgeries=surgery; operated=surgery; hospitalized=hospital; hospitalization=hospital; pregnant=pregnancy;
allergic=allergy; asthmatic=asthma; hypertensive=hypertension; anemic=anemia; obese=obesity;
depressed=depression; anxious=anxiety; infected=infection; infectious=infection; inflamed=inflammation;
bleeding=bleed; bled=bleed; broken=fracture; fractured=fracture; marriage=married; jewellery=jewelry;
nephrolithiasis=kidney stone; yrs=year; yr=year; mos=month; wks=week; wk=week; hrs=hour; min=minute;
mins=minute; pk=pack
""")

# Drugs: canonical generic name per brand; generic names below and suffix-matched names map to themselves.
BRANDS = _pairs("""
tylenol=acetaminophen; paracetamol=acetaminophen; advil=ibuprofen; motrin=ibuprofen; aleve=naproxen;
naprosyn=naproxen; lasix=furosemide; coumadin=warfarin; glucophage=metformin; neurontin=gabapentin;
lyrica=pregabalin; norvasc=amlodipine; zoloft=sertraline; prozac=fluoxetine; lexapro=escitalopram;
celexa=citalopram; paxil=paroxetine; wellbutrin=bupropion; xanax=alprazolam; ativan=lorazepam; valium=diazepam;
klonopin=clonazepam; ambien=zolpidem; zyrtec=cetirizine; claritin=loratadine; allegra=fexofenadine;
benadryl=diphenhydramine; flonase=fluticasone; singulair=montelukast; ventolin=albuterol; proair=albuterol;
synthroid=levothyroxine; lipitor=atorvastatin; zocor=simvastatin; crestor=rosuvastatin; nexium=esomeprazole;
prilosec=omeprazole; protonix=pantoprazole; pepcid=famotidine; zantac=ranitidine; keflex=cephalexin;
augmentin=amoxicillin; zithromax=azithromycin; cipro=ciprofloxacin; levaquin=levofloxacin; flagyl=metronidazole;
diflucan=fluconazole; valtrex=valacyclovir; flomax=tamsulosin; toprol=metoprolol; lopressor=metoprolol;
coreg=carvedilol; aldactone=spironolactone; hctz=hydrochlorothiazide; accutane=isotretinoin; daypro=oxaprozin;
mobic=meloxicam; celebrex=celecoxib; toradol=ketorolac; flexeril=cyclobenzaprine; zofran=ondansetron;
imitrex=sumatriptan; topamax=topiramate; keppra=levetiracetam; dilantin=phenytoin; tegretol=carbamazepine;
lamictal=lamotrigine; seroquel=quetiapine; abilify=aripiprazole; risperdal=risperidone; haldol=haloperidol;
lovenox=enoxaparin; plavix=clopidogrel; eliquis=apixaban; xarelto=rivaroxaban; vicodin=hydrocodone;
norco=hydrocodone; percocet=oxycodone; oxycontin=oxycodone; ozempic=semaglutide; lantus=insulin;
humalog=insulin; novolog=insulin; epipen=epinephrine; narcan=naloxone; bactrim=sulfamethoxazole;
humira=adalimumab; plaquenil=hydroxychloroquine; medrol=methylprednisolone; robaxin=methocarbamol;
phenergan=promethazine; reglan=metoclopramide; suboxone=buprenorphine; adderall=amphetamine;
ritalin=methylphenidate; viagra=sildenafil; cialis=tadalafil; jardiance=empagliflozin; farxiga=dapagliflozin;
januvia=sitagliptin; trulicity=dulaglutide; ultram=tramadol; zestril=lisinopril; prinivil=lisinopril;
cozaar=losartan; victoza=liraglutide; metamucil=psyllium; miralax=polyethylene; colace=docusate;
sudafed=pseudoephedrine; mucinex=guaifenesin; nasonex=mometasone; symbicort=budesonide; advair=fluticasone;
spiriva=tiotropium; depakote=valproate; effexor=venlafaxine; cymbalta=duloxetine; proscar=finasteride;
premarin=estrogen; estrace=estradiol; provera=medroxyprogesterone; kenalog=triamcinolone;
macrobid=nitrofurantoin; tamiflu=oseltamivir; lamisil=terbinafine
""")
GENERICS = _set("""
aspirin acetaminophen ibuprofen naproxen insulin metformin prednisone prednisolone methadone morphine oxycodone
hydrocodone tramadol gabapentin pregabalin warfarin heparin digoxin amiodarone nitroglycerin colchicine
allopurinol methotrexate lithium levothyroxine spironolactone finasteride tamsulosin isotretinoin tretinoin
melatonin epinephrine naloxone fentanyl codeine buprenorphine ketamine cocaine heroin methamphetamine marijuana
cannabis nicotine clonidine hydralazine furosemide bumetanide torsemide hydrochlorothiazide chlorthalidone
amlodipine nifedipine diltiazem verapamil sertraline fluoxetine citalopram escitalopram paroxetine bupropion
trazodone mirtazapine venlafaxine duloxetine amitriptyline nortriptyline quetiapine olanzapine aripiprazole
risperidone haloperidol zolpidem diphenhydramine cetirizine loratadine fexofenadine albuterol fluticasone
budesonide montelukast ondansetron promethazine metoclopramide sumatriptan topiramate levetiracetam phenytoin
carbamazepine lamotrigine valproate doxycycline penicillin vancomycin cephalexin ceftriaxone nitrofurantoin
sulfamethoxazole clindamycin acyclovir valacyclovir oseltamivir adalimumab infliximab steroid steroids cortisone
hydrocortisone dexamethasone triamcinolone glipizide glyburide glimepiride buspirone hydroxyzine benzonatate
estradiol estrogen progesterone medroxyprogesterone norethindrone baclofen tizanidine ezetimibe fenofibrate
isosorbide mupirocin terbinafine liraglutide psyllium docusate pseudoephedrine guaifenesin mometasone
""")
DRUG_SUFFIXES = ("pril", "sartan", "olol", "ilol", "alol", "dipine", "statin", "prazole", "tidine", "cillin",
                 "mycin", "micin", "cycline", "floxacin", "conazole", "nidazole", "triptan", "zepam", "zolam",
                 "profen", "coxib", "fenac", "semide", "thiazide", "formin", "gliptin", "glitazone",
                 "gliflozin", "glutide", "parin", "xaban", "gatran", "grel", "umab", "imab", "tinib", "ciclovir",
                 "cyclovir", "terol", "tropium", "lukast", "oxetine", "traline", "pramine", "triptyline",
                 "azepine", "piprazole", "peridol", "iapine", "anzapine", "eridone", "faxine", "dronate",
                 "olone", "isone", "asone", "codone", "morphone", "caine", "barbital", "tretin", "thyroxine")
NOT_DRUGS = _set("cholesterol supine spine alpine")

SECTION_WORDS = _set("results plan vitals exam examination assessment impression instructions medications "
                     "allergies procedure procedures orders subjective objective labs imaging findings history")
