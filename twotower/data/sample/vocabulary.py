"""The sample's vocabulary: categories with their product types, materials/colours, brands and phrases;
price bands; event-name spellings; the calendar. Tables only, no logic.

Changing any table (or the order of its entries) changes the generated sample for every seed.
"""

from __future__ import annotations

import numpy as np

# --- catalogue vocabulary ----------------------------------------------------------------------------
# Each category: slug (metadata catalog_id), share of the catalogue and of buyers' attention, product type
# nouns (with grammatical gender, for adjective agreement), six materials/colours, four brands (name, tier)
# and phrases for descriptions. Brand tier biases a product's price band (real brands sit in a band).
_M, _F = 0, 1
CATEGORIES: tuple[dict, ...] = (
    {
        "slug": "jewellery",
        "weight": 1.3,
        "types": (("خاتم", _M), ("سلسال", _M), ("قلادة", _F), ("أساور", _F), ("حلق", _M), ("طقم", _M)),
        "variants": ("ذهب عيار 21", "ذهب عيار 18", "ذهب أبيض", "فضة عيار 925", "مرصع بالألماس", "باللؤلؤ"),
        "brands": (("لازوردي", 2), ("داماس", 2), ("الفردان", 1), ("Swarovski", 1)),
        "uses": ("هدية مثالية للمناسبات والأعراس", "يأتي في علبة هدايا أنيقة", "مع شهادة ضمان للمعدن"),
        "price": 900.0,
    },
    {
        "slug": "women_fashion",
        "weight": 1.4,
        "types": (
            ("فستان", _M),
            ("عباية", _F),
            ("بلوزة", _F),
            ("تنورة", _F),
            ("جاكيت", _M),
            ("حقيبة يد", _F),
        ),
        "variants": ("لون أسود", "لون أبيض", "لون كحلي", "لون بيج", "لون وردي", "لون أحمر"),
        "brands": (("Zara", 1), ("Mango", 1), ("أناقة", 0), ("لمسة حرير", 2)),
        "uses": ("قماش ناعم ومريح طوال اليوم", "مناسب للسهرات والمناسبات", "متوفر بجميع المقاسات"),
        "price": 220.0,
    },
    {
        "slug": "men_fashion",
        "weight": 1.0,
        "types": (("ثوب", _M), ("شماغ", _M), ("قميص", _M), ("بنطال", _M), ("معطف", _M), ("حزام جلد", _M)),
        "variants": ("لون أبيض", "لون أسود", "لون رمادي", "لون كحلي", "لون بني", "لون زيتي"),
        "brands": (("الدفة", 1), ("لومار", 2), ("Levi's", 1), ("ستايل", 0)),
        "uses": ("تفصيل دقيق وخامة عالية", "مناسب للعمل والمناسبات", "سهل العناية والغسيل"),
        "price": 250.0,
    },
    {
        "slug": "electronics",
        "weight": 1.2,
        "types": (
            ("جوال ذكي", _M),
            ("سماعات لاسلكية", _F),
            ("شاحن سريع", _M),
            ("ساعة ذكية", _F),
            ("لابتوب", _M),
            ("شاشة تلفزيون", _F),
        ),
        "variants": ("لون أسود", "لون فضي", "لون أزرق", "لون ذهبي", "لون أبيض", "لون رمادي"),
        "brands": (("Samsung", 1), ("Apple", 2), ("Xiaomi", 0), ("هواوي", 1)),
        "uses": ("ضمان سنتين من الوكيل", "بطارية تدوم طويلا", "يدعم الشحن السريع والاتصال اللاسلكي"),
        "price": 1500.0,
    },
    {
        "slug": "beauty",
        "weight": 1.1,
        "types": (
            ("أحمر شفاه", _M),
            ("كريم مرطب", _M),
            ("ماسكارا", _F),
            ("كريم أساس", _M),
            ("غسول وجه", _M),
            ("سيروم", _M),
        ),
        "variants": (
            "للبشرة الجافة",
            "للبشرة الدهنية",
            "للبشرة الحساسة",
            "بدرجة نود",
            "بدرجة وردية",
            "بخلاصة الورد",
        ),
        "brands": (("هدى بيوتي", 2), ("L'Oréal", 1), ("Nivea", 0), ("جمالك", 0)),
        "uses": ("مناسب للاستخدام اليومي", "خال من البارابين", "ثبات يدوم طوال اليوم"),
        "price": 120.0,
    },
    {
        "slug": "perfumes",
        "weight": 1.0,
        "types": (
            ("عطر", _M),
            ("دهن عود", _M),
            ("بخور", _M),
            ("معطر شعر", _M),
            ("مسك", _M),
            ("طقم عطور", _M),
        ),
        "variants": ("برائحة العود", "بالورد الطائفي", "بالمسك الأبيض", "بالعنبر", "بالزعفران", "بالفانيلا"),
        "brands": (("العربية للعود", 2), ("عبدالصمد القرشي", 2), ("أجمل", 1), ("Rasasi", 1)),
        "uses": ("ثبات عال وفوحان مميز", "مناسب للرجال والنساء", "هدية راقية في علبة فاخرة"),
        "price": 350.0,
    },
    {
        "slug": "home",
        "weight": 0.9,
        "types": (
            ("طقم أواني", _M),
            ("مفرش سرير", _M),
            ("سجادة", _F),
            ("مصباح", _M),
            ("دلة قهوة", _F),
            ("طقم فناجين", _M),
        ),
        "variants": ("ستانلس ستيل", "من الخشب", "من السيراميك", "من القطن", "من النحاس", "من الزجاج"),
        "brands": (("IKEA", 0), ("هوم سنتر", 1), ("Tefal", 1), ("بيت الزين", 2)),
        "uses": ("يضفي لمسة دافئة على منزلك", "سهل التنظيف", "مناسب للضيافة والمناسبات"),
        "price": 300.0,
    },
    {
        "slug": "kids",
        "weight": 0.8,
        "types": (
            ("لعبة تركيب", _F),
            ("دمية", _F),
            ("عربة أطفال", _F),
            ("طقم ملابس أطفال", _M),
            ("حقيبة مدرسية", _F),
            ("سيارة تحكم", _F),
        ),
        "variants": ("للأولاد", "للبنات", "للرضع", "من عمر 3 سنوات", "من عمر 6 سنوات", "بألوان زاهية"),
        "brands": (("LEGO", 2), ("Fisher-Price", 1), ("Mothercare", 1), ("دنيا الأطفال", 0)),
        "uses": ("آمن ومطابق لمعايير السلامة", "ينمي مهارات الطفل", "هدية مثالية للأطفال"),
        "price": 180.0,
    },
    {
        "slug": "sports",
        "weight": 0.8,
        "types": (
            ("حذاء جري", _M),
            ("كرة قدم", _F),
            ("دمبل", _M),
            ("سجادة يوغا", _F),
            ("بدلة رياضية", _F),
            ("دراجة هوائية", _F),
        ),
        "variants": ("لون أسود", "لون أزرق", "لون أحمر", "لون أبيض", "لون أخضر", "لون رمادي"),
        "brands": (("Nike", 2), ("Adidas", 1), ("Puma", 1), ("سن آند ساند", 0)),
        "uses": ("مناسب للتمارين اليومية", "خامة تسمح بالتهوية", "تصميم يناسب المحترفين والمبتدئين"),
        "price": 260.0,
    },
    {
        "slug": "food",
        "weight": 0.9,
        "types": (
            ("تمر", _M),
            ("قهوة عربية", _F),
            ("عسل", _M),
            ("شاي", _M),
            ("مكسرات", _F),
            ("شوكولاتة", _F),
        ),
        "variants": ("سكري", "خلاص", "عجوة المدينة", "سدر", "بالهيل", "بالزعفران"),
        "brands": (("بتيل", 2), ("الرفاعي", 1), ("Patchi", 2), ("خيرات المزرعة", 0)),
        "uses": ("طازج ومن أجود الأنواع", "مثالي للضيافة في رمضان والأعياد", "معبأ بعناية للحفاظ على الجودة"),
        "price": 90.0,
    },
)
N_CAT = len(CATEGORIES)
N_TYPE = 6
N_VAR = 6
N_BRAND = 4  # per category
N_BAND = 3
CELLS = N_BRAND * N_VAR * N_BAND  # taste cells per category: brand x material/colour x price band
# Price band words, by noun gender; the band must be visible in the text so a text model can learn it.
BAND_ADJ = (("اقتصادي", "اقتصادية"), ("عملي", "عملية"), ("فاخر", "فاخرة"))
BAND_PHRASE = ("بسعر اقتصادي يناسب الجميع", "جودة ممتازة بسعر معقول", "تشطيب فاخر وجودة استثنائية")
BAND_PRICE = (0.4, 1.0, 3.0)
STYLES = ("عصري", "كلاسيكي", "أنيق", "عملي", "جديد")
DESC_TEMPLATES = (
    "{type} {variant} من {brand}. {band}. {use}.",
    "منتج أصلي من {brand}: {type} {variant}، {band}. {use}.",
    "{use}. {type} {variant} بتصميم {style} من {brand}، {band}.",
)

# --- event vocabulary --------------------------------------------------------------------------------
# One spelling set per tracking source; a buyer mostly uses one source (web, app, ...), sometimes another.
EVENT_SPELLINGS = (
    ("View", "AddToCart", "Purchase"),
    ("view", "add_to_cart", "purchase"),
    ("product_viewed", "added_to_cart", "order_completed"),
    ("Product Viewed", "Add To Cart", "Order Completed"),
)
UNKNOWN_EVENTS = ("page_scroll", "wishlist_share", "banner_click", "session_start", "search_submitted")
BAD_TIMESTAMPS = ("not-a-date", "", "2024-13-45T99:99:99Z", "N/A", "null")
T0 = np.datetime64("2024-01-01T00:00:00", "s")
DAYS = 90
# Hour-of-day weights (UTC): quiet nights, evening peak.
HOURS = np.array(
    [2, 1, 1, 1, 1, 2, 3, 4, 5, 6, 6, 6, 7, 7, 6, 6, 7, 8, 10, 12, 13, 12, 8, 4], dtype=np.float64
)
