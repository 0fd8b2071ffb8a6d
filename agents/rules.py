"""Situations a person handles, found by rule, not left to a classifier's confidence: a
possible security incident, a ticket that tries to instruct the agents, a request for another
person's data, and legal matters (a threat among them). Each is a list of patterns in the
languages the reference agents read (English, German, French, Spanish, Italian, Dutch,
Portuguese).

Triage reports the flags it finds; the ``support`` workflow routes a flagged ticket to a person
before any agent acts on it."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable

from switchyard.agents.pii import Finding, find_pii

SECURITY = "security_incident"
INJECTION = "prompt_injection"
THIRD_PARTY = "third_party_data"
LEGAL = "legal"
LEGAL_THREAT = "legal_threat"


def _any(patterns: Iterable[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


_SECURITY = _any([
    r"\bhack(?:ed|ers?)\b", r"\b(?:account|password|login|device|laptop|email)s? (?:was |were |is |"
    r"has been |have been )?compromised\b", r"\bcompromised (?:account|password|login)",
    r"\bphishing\b", r"\bbreach(?:ed)?\b(?!.*contract)",
    r"(?:someone|somebody|a stranger|an unknown person)(?: else)? (?:has )?(?:logged|signed|got) in",
    r"suspicious (?:log-?ins?|sign-?ins?|activity|sessions?|emails?)",
    r"(?:wasn't|was not|not) me\b", r"\bunauthori[sz]ed (?:access|log-?ins?|sign-?ins?|user)",
    r"\bstolen\b.{0,60}\b(?:logged in|signed in|access|session|admin)",
    r"(?:kill|end|revoke|terminate|log out) (?:all )?(?:of )?(?:the |my )?(?:active )?sessions",
    r"log-?ins? (?:from|on) (?:devices?|countries|locations?|ip)",
    r"(?:devices?|locations?|log-?ins?|sessions?) (?:that )?(?:I|we) (?:do not|don't|didn't|did not) "
    r"(?:own|recogni[sz]e|know|make)",
    r"publicly (?:readable|accessible|exposed)", r"\bdata leak\b",
    r"security (?:researcher|vulnerability|hole|flaw)",
    r"password (?:was|has been) changed.{0,60}(?:not|wasn't|didn't)",
    r"\b(?:fake|fraudulent|spoofed|look-?alike|phony) (?:emails?|e-mails?|invoices?|sites?|websites?|"
    r"domains?|log-?in pages?)", r"domain that (?:isn't|is not) yours",
    r"(?:emails?|e-mails?|messages?|texts?|sms)\b.{0,30}\b(?:looks?|pretend\w*|claim\w*|posing) "
    r"(?:exactly )?(?:like|to be|as) (?:from )?(?:you|your|support)",
    # de, fr, es, it, nl, pt
    r"\bgehackt\b", r"\bverdächtige? (?:anmeldung|login|aktivität)", r"nicht ich\b", r"\bunbefugte?\b",
    r"\bpiraté(?:e|s|es)?\b", r"connexions? suspecte", r"ce n'(?:est|était) pas moi", r"\busurpation\b",
    r"\bhacke(?:ado|ada|aron)\b", r"sesi(?:ón|ones) sospechos", r"inicios? de sesión.{0,60}no son m[ií]os",
    r"\bhackerat[oa]\b", r"access[oi] sospett", r"non sono stat[oa] io",
    r"\bverdachte? (?:inlog|aanmelding|activiteit)", r"\bniet ik\b", r"\bgehackt\b",
    r"\b(?:invadid[ao]|hackead[ao])\b", r"acessos? suspeit", r"não fui eu",
    # a vulnerability reported, in any of the languages
    r"\b(?:xss|cross-site scripting|sql injection|csrf|idor|remote code execution|"
    r"vulnerabilit(?:y|ies)|exploitable|responsible(?:ly)? disclos\w*|bug bounty|cve-\d{4})",
    r"\bsicherheitslücke", r"\bschwachstelle", r"\bfaille (?:de sécurité|xss)", r"\bvulnérabilité",
    r"\bvulnerabilidad", r"\bvulnerabilit[àa]\b", r"\bkwetsbaarhe(?:id|den)\b", r"\bbeveiligingslek",
    r"\bvulnerabilidade", r"\b(?:fallo|falla|falha|falla) de (?:seguridad|segurança|sicurezza)",
    # a secret out in the open: leaked, pushed, posted, made public (not merely used with GitHub)
    r"\b(?:api[- ]?(?:keys?|tokens?)|access tokens?|secret keys?|credentials|passwords?|"
    r"api-(?:sleutel|schlüssel)|cl[ée]s? (?:d'|de )?api|claves? (?:de )?api|chiavi? api|"
    r"chaves? (?:de )?api)\b.{0,60}\b(?:leaked|exposed|committed|pushed|posted|published|"
    r"made public|(?:is|are|was|were) public|pastebin|publiek|öffentlich|publiquement|pública|"
    r"pubblicat[oa]|pubblic[ao])\b",
    r"\b(?:leaked|pushed|committed|posted|published|exposed)\b.{0,40}\b(?:api[- ]?(?:keys?|tokens?)|"
    r"access tokens?|secret keys?|credentials|passwords?)\b",
    # someone else got in, in the other languages; a phishing mail in the product's name
    r"\bqualcuno (?:è|e) entrat[oa]\b", r"\balguien (?:ha )?entr(?:ó|ado) en mi cuenta",
    r"\bquelqu'un (?:s'est connecté|est entré|a accédé)", r"\bjemand hat sich\b.{0,30}"
    r"\b(?:eingeloggt|angemeldet)", r"\biemand (?:is|heeft)\b.{0,30}\b(?:ingelogd|ingebroken)",
    r"\balguém (?:entrou|acedeu|acessou)", r"\baccessi da (?:un paese|paesi|dispositivi)",
    r"\b(?:mail|e-mail|email|bericht|nachricht|courriel|correo|messaggio|mensagem)\b.{0,30}"
    r"\b(?:with|met|mit|avec|con|com) (?:your|jullie|uw|ihrem|eurem|votre|vuestro|su|il vostro|"
    r"o (?:seu|vosso)) logo\b", r"\b(?:strange|weird|unknown|vreemd|fremde|étrange|extraño|strano|"
    r"estranho)e? (?:domain|domein|domäne|domaine|dominio|domínio)",
    # credentials for sale; security settings changed behind the customer's back
    r"\b(?:passwords?|credentials|log-?ins?|e-?mails? and passwords?|passwörter|zugangsdaten|"
    r"wachtwoorden|mots de passe|contraseñas|senhas)\b.{0,60}\b(?:for sale|being sold|on (?:a|the) "
    r"(?:forum|dark ?web)|dumped|pastebin|in vendita|zum verkauf|à vendre|en venta|à venda|te koop)",
    r"\b(?:2fa|two-factor|mfa|two-step)\b.{0,40}\b(?:turned|switched|disabled|removed|off)\b.{0,60}"
    r"\b(?:without (?:me|my|us|our)|not (?:by )?(?:me|us)|(?:wasn't|was not) (?:me|us)|"
    r"I (?:never|didn't|did not) (?:do|did|change|touch|turn|switch|disable|ask))",
    r"\b(?:turned off|switched off|disabled|removed)\b.{0,20}\b(?:2fa|two-factor|mfa|two-step)\b.{0,60}"
    r"\b(?:without (?:me|my|us|our)|not (?:by )?(?:me|us)|(?:wasn't|was not) (?:me|us)|"
    r"I (?:never|didn't|did not) (?:do|did|change|touch|turn|switch|disable|ask))",
    r"\b(?:never (?:asked|requested) for|didn't (?:ask|request)|did not (?:ask|request))\b.{0,80}"
    r"\b(?:2fa|two-factor|password|e-?mail (?:address )?(?:was |got )?changed)",
    # the customer's data out in the open ("our customer export is publicly online")
    r"\b(?:data|exports?|files?|documents?|database|backups?|records|lists?|\w*gegevens|\w*daten|"
    r"\w*bestand(?:en)?|\w*dateien|données|datos|dati|dados|fichiers?|archivos?|ficheiros?)\b.{0,60}\b(?:openbaar|öffentlich|publiquement|públicamente|pubblicamente|"
    r"publicamente|publicly)\b.{0,20}\b(?:online|zugänglich|accessible|accesible|accessibil\w*|"
    r"acessível|available|visible|downloadable|readable|listed)",
    # someone reaching another company's data, or taking the customer's
    r"\b(?:could|can|was able to|were able to) (?:see|access|view|download|read)\b.{0,50}"
    r"\b(?:another|someone else's|a different) (?:company|companies|customer|organi[sz]ation|"
    r"workspace|tenant)(?:'s|s)?\b",
    r"\b(?:could|can|was able to|were able to) (?:open|get into|edit)\b.{0,50}\b(?:someone else's|"
    r"(?:another|a different) (?:company|customer|organi[sz]ation|tenant)'s)",
    r"\b(?:former|ex-?) ?(?:employees?|colleagues?|staff|contractors?|admins?)\b.{0,80}"
    r"\b(?:still (?:had|has|have) access|downloaded|exported|copied)",
    r"\b(?:someone|somebody|a stranger|an unknown \w+|the attacker|an attacker|they)\b.{0,40}"
    r"\b(?:downloaded|exported|copied|stole|took)\b.{0,30}\b(?:customer|client|user|contact)s? "
    r"(?:list|database|data)",
])
_INJECTION = _any([
    r"\b(?:ignore|disregard|forget|override) (?:the )?(?:all|any|your|previous|prior|above|earlier|"
    r"system)(?: previous| prior| your| the| of your)? (?:instructions|rules|prompts?|guidelines)",
    r"\byou are now (?:an? |in |free|unlocked|unrestricted|no longer|\w+-?bot\b|dan\b)",
    r"\bsystem prompt\b", r"\bhidden instructions\b", r"\bjailbreak", r"\bsystem override\b",
    r"(?:^|\n)\s*(?:assistant|system)\s*:", r"\bassistant:\s",
    r"reveal (?:your |the )?(?:instructions|prompt|rules|configuration)",
    r"as (?:the|an|your) (?:platform )?(?:admin|administrator|developer|owner),? "
    r"I (?:order|instruct|command)",
    r"do not (?:tell|inform|show|send this to) (?:a human|any human|a person|your supervisor|anyone)",
    r"list (?:all )?(?:the )?tools you (?:can|have)",
    r"ignorier(?:e|en sie)? (?:alle )?(?:vorherigen |bisherigen )?(?:anweisungen|regeln)",
    r"ignorez (?:toutes )?(?:les |vos )?(?:instructions|règles)",
    r"ignora (?:todas )?(?:las |tus )?instrucciones",
    r"ignora (?:tutte )?(?:le )?istruzioni", r"negeer (?:alle )?(?:eerdere )?instructies",
    r"ignore (?:todas )?as instruções",
    # the policies, not just the instructions, in any language; a note addressed to the AI
    r"\b(?:ignore|ignorez|ignora|ignoriere|ignorieren sie|negeer|disregard|bypass|override) "
    r"(?:all |alle |toutes |todas |tutte )?(?:your |vos |tus |tue |suas |ihre |jullie |"
    r"(?:the |die |les |las |le |as |os |de )?(?:internal |internen? |internes |internas ))"
    r"(?:policies|politiques|richtlinien|políticas|politiche|regels|richtlijnen|regras|reglas)",
    r"\b(?:ignore|ignorez|ignora|ignoriere|negeer) (?:las |as |le |les |die |de |os )(?:políticas|"
    r"politiques|richtlinien|politiche|regels|richtlijnen|regras|reglas) (?:internas|internes|"
    r"interne|internen)",
    r"\b(?:note|message|instructions?) (?:to|for) (?:the |any )?(?:\w+ )?(?:ai|a\.i\.|bot|chatbot|"
    r"llm|gpt)\b",
    r"\b(?:nota|mensagem|mensaje|messaggio) (?:para|per) (?:o |a |el |la |l')?(?:assistente|asistente|"
    r"ia|ai|bot)\b",
    r"\b(?:hinweis|nachricht|anweisung) an (?:die |den )?(?:ki|assistent|bot)\b",
    r"\bnote (?:pour|à) (?:l'|le )?(?:assistant|ia|bot)\b", r"\bnotitie voor de (?:ai|assistent|bot)\b",
])
_DATA = (r"(?:phone(?: number)?|mobile|numbers?|address(?:es)?|e-?mail(?: address)?|contact details|"
         r"details|invoices?|plan|accounts?|password|cards?|telefon(?:nummer)?|adresse|e-mail-adresse|handynummer|"
         r"numéro|téléphone|courriel|teléfono|dirección|correo|indirizzo|telefono|adres|"
         r"telefoonnummer|endereço|telemóvel)")
_OTHERS = (r"(?:colleague|co-?worker|friend|boss|manager|ex|wife|husband|partner|neighbou?r|"
           r"her|his|him|someone else|another customer|kollegin|kollege|freund(?:in)?|"
           r"chef(?:in)?|collègue|ami|amie|patron|colega|amig[oa]|jefe|"
           r"collega|amic[oa]|capo|vriend(?:in)?|baas|chefe|"
           # another of your customers, whoever they are
           r"(?:your|another|other) (?:customer|client|user)\b(?! service| support| success| care| portal|"
           r" team)|the (?:customer|client|user) (?:who|that)|"
           r"otr[oa]s? client[ea]s?|autres? clients?|anderen? kunden|altr[oa] client[ei]|"
           r"andere klant(?:en)?|outr[oa]s? client[ea]s?|soci[oa]|sócio|partenaire|associée?|"
           r"geschäftspartner(?:in)?|compagn[oa]|zakenpartner|"
           r"(?:del|do) cliente que|du client qui|des kunden,? (?:der|die)|del cliente che|"
           r"van de klant die)")
_ASK = (r"(?:tell|give|send|share|forward|provide|what(?:'s| is| are)|which|look up|find out|"
        r"need(?! to\b)|"
        r"necesito|preciso|brauche|besoin|bisogno|nodig|pasar|pasen|mandar|mandarme|"
        r"geben|schicken|nennen|mitteilen|sagen|donner|donnez|envoyer|envoyez|communiquer|dites|"
        r"dar|dame|enviar|decir|dime|dare|inviare|dimmi|dirmi|geven|geef|sturen|stuur|doorgeven|"
        r"dizer|diga|passar|quais|qual)")
_THIRD_PARTY = re.compile(
    rf"{_ASK}\b.{{0,80}}\b{_DATA}\b.{{0,60}}\b{_OTHERS}\b|{_ASK}\b.{{0,60}}\b{_OTHERS}\b.{{0,40}}\b{_DATA}\b|"
    rf"\b(?-i:[A-Z][a-z]+ [A-Z][a-z]+)(?:'s| s)\b.{{0,40}}\b{_DATA}\b|\b{_DATA}\b (?:of|von|de|di|van) "
    rf"(?:(?-i:[A-Z][a-z]+ [A-Z][a-z]+)|my {_OTHERS})", re.IGNORECASE | re.DOTALL)
# a legal threat: the severity is high
_LEGAL_THREAT = _any([
    r"\blawsuit\b", r"\b(?:will|going to|shall|to) sue\b", r"\bsu(?:e|ing) (?:you|your|the company)\b",
    r"\bcourt\b", r"\bsubpoena", r"\bcease and desist\b",
    r"\blegal (?:action|steps|proceedings|notice|claim)", r"\bchargeback\b", r"\bregulator\b",
    r"data protection (?:authority|regulator)", r"\bpolice\b", r"formal (?:notice|complaint)",
    r"\bdisput(?:e|ed|ing)\b.{0,40}\b(?:bank|charge|payment|card)",
    r"\b(?:my|our) (?:bank|card issuer)\b.{0,60}\b(?:revers|disput|chargeback|claim)",
    r"\b(?:claim|claiming|seek|seeking|sue for) damages\b", r"\bdamages (?:claim|of \d)",
    r"\b(?:counsel|lawyers?|attorneys?|solicitors?)\b.{0,60}\b(?:claim|complaint|legal action|papers)\b",
    r"\bklage\b", r"\bgericht", r"datenschutzbehörde", r"\btribunal\b", r"\bcnil\b",
    r"mise en demeure", r"\bdemanda\b", r"\btribunale\b", r"garante per la protezione",
    r"\bdiffida\b", r"\brechtbank\b", r"\bprocesso judicial\b",
])
# a legal matter: a person handles it, at the severity the classifier says
_LEGAL = _any([
    r"\blawyers?\b", r"\battorneys?\b", r"\bsolicitors?\b", r"\bcounsel\b", r"\btrademark\b",
    r"\bcopyright\b", r"\bdmca\b", r"\bgdpr\b", r"\bccpa\b", r"data protection officer",
    r"formal request", r"\bdata subject\b", r"article 1[57]\b", r"\banwalt\b", r"\brechtsanwält",
    r"\bdsgvo\b", r"\bavocats?\b", r"\brgpd\b", r"\babogad[oa]s?\b", r"\bavvocat[oi]\b",
    r"\badvocaat\b", r"\badvogad[oa]s?\b", r"\blgpd\b",
])

# data lost: not a person's matter by itself, but the severity is high (docs/eval.md)
_DATA_LOST = _any([
    r"\b(?:all|every|entire|whole)\b[^.?!]{0,40}\b(?:data|files?|documents?|docs?|tasks?|comments?|"
    r"projects?|history|records?|attachments?|messages?|notes?|boards?|content)\b[^.?!]{0,40}"
    r"(?<!not )(?<!n't )(?<!never )\b(?:gone|lost|deleted|disappeared|wiped|vanished|erased)\b",
    r"\b(?:lost|deleted|wiped|erased)\b[^.?!]{0,20}\b(?:all|every|entire|whole)\b[^.?!]{0,30}"
    r"\b(?:data|files?|documents?|docs?|tasks?|comments?|projects?|history|records?|attachments?|"
    r"content)\b",
    r"\b(?:alle|sämtliche)\b[^.?!]{0,40}\b(?:daten|dateien|dokumente|aufgaben|kommentare|projekte)"
    r"\b[^.?!]{0,40}\b(?:weg|verschwunden|gelöscht|verloren)\b",
    r"\b(?:tou(?:s|tes)|l'ensemble)\b[^.?!]{0,40}\b(?:données|fichiers|documents|tâches|commentaires|"
    r"projets)\b[^.?!]{0,40}\b(?:disparu|perdu|supprimé|effacé)e?s?\b",
    r"\btod[oa]s\b[^.?!]{0,40}\b(?:datos|archivos|documentos|tareas|comentarios|proyectos|dados|"
    r"ficheiros|arquivos|projetos|comentários)\b[^.?!]{0,40}\b(?:desaparec\w*|perdid[oa]s|"
    r"borrad[oa]s|eliminad[oa]s|apagad[oa]s|sumiram)\b",
    r"\btutt[ie]\b[^.?!]{0,40}\b(?:dati|file|documenti|attività|commenti|progetti)\b[^.?!]{0,40}"
    r"\b(?:spari\w*|pers[io]|cancellat[ie]|eliminat[ie])\b",
    r"\balle\b[^.?!]{0,40}\b(?:gegevens|bestanden|documenten|taken|opmerkingen|projecten)\b[^.?!]{0,40}"
    r"\b(?:verdwenen|kwijt|verwijderd|weg)\b",
])
# a sentence that asks, supposes or requests ("will all my files be deleted?", "if all our data is
# lost", "please delete all my data") or says nothing was lost tells of no loss
_NO_LOSS = re.compile(
    r"\b(?:if|will|would|wenn|falls|wird|würde|si|se|als|zal|nothing|none|nichts|rien|nada|niente|"
    r"niets|please|bitte|por favor|per favore|graag|s'il vous plaît|want|would like|möchte|"
    r"delete|löschen|supprimer|eliminar|eliminare|verwijderen|apagar)\b", re.IGNORECASE)
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*")


def data_lost(text: str) -> bool:
    """Whether a ticket tells that a whole body of the customer's data is gone."""
    return any(_DATA_LOST.search(s) and not s.rstrip().endswith("?") and not _NO_LOSS.search(s)
               for s in _SENTENCE.findall(text))


# an address something is to be sent to ("send the steps to x@…"), not one asked about
_TO = re.compile(r"\b(?:to|an|à|a|naar|para|per|via)\s*:?\s*$", re.IGNORECASE)
_OWN = re.compile(r"\b(?:my|mine|meine?[mnrs]?|mon|ma|mes|mi|mis|mio|mia|mijn|meu|minha)\b",
                  re.IGNORECASE)


def flags(raw: str, text: str, *, sender: str | None = None,
          pii: list[Finding] | None = None) -> list[str]:
    """The flags of a ticket: ``raw`` as it came (markup and all), ``text`` its plain text,
    ``sender`` the customer's own email (another address in the text is someone else's),
    ``pii`` what ``find_pii(text)`` found, when the caller has it already."""
    found = []
    if _SECURITY.search(text):
        found.append(SECURITY)
    # the raw text too, entities decoded: an instruction hidden from a person's eye in markup
    if _INJECTION.search(text) or _INJECTION.search(html.unescape(raw)):
        found.append(INJECTION)
    # another address than the sender's, asked about: not one the writer calls their own
    others = [f for f in (find_pii(text) if pii is None else pii) if f.kind == "email"
              and f.value.lower() != (sender or "").lower()
              and not _OWN.search(text[max(0, f.start - 40):f.start])
              and not _TO.search(text[max(0, f.start - 12):f.start])]
    if _THIRD_PARTY.search(text) or (others and re.search(rf"\b{_ASK}\b", text, re.IGNORECASE)):
        found.append(THIRD_PARTY)
    if _LEGAL_THREAT.search(text):
        found += [LEGAL, LEGAL_THREAT]
    elif _LEGAL.search(text):
        found.append(LEGAL)
    return found
